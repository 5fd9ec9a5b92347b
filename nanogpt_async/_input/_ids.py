"""Finding a repeated item id without holding every id in memory.

A batch finds earlier work by item id, so two items with one id would share one manifest
record: the second would be skipped on resume (or overwrite the first's record). Ids given by
the user are therefore checked as they are read. Holding the ids themselves would cost a
hundred bytes or more each; this keeps a 96-bit hash of each and where it was first seen, in
flat arrays (open addressing, at most half full): 16 bytes a slot, 32 bytes an id at worst.
Two different ids share a 96-bit hash with a chance of about n² / 2⁹⁷ (10⁻¹⁵ for ten million
ids), so a reported repeat is a real one.
"""

from __future__ import annotations

from array import array

__all__ = ["RepeatedIds"]

_NO_POSITION = 0xFFFFFFFF


class RepeatedIds:
    """Remembers ids and answers, for each new one, where it was seen before (if it was).

    Example:
        >>> ids = RepeatedIds()
        >>> ids.add("fox", 1), ids.add("owl", 2), ids.add("fox", 7)
        (None, None, 1)
    """

    def __init__(self, expected: int = 0) -> None:
        """Start with no id seen, with room for ``expected`` ids before the table grows.

        Growing it by doubling on the way to a million ids re-inserted two million (0.29 s of
        1.46 s of adding them): a resume knows about how many to expect (`Preparer.expect_ids`).
        """
        size = max(1024, 1 << (2 * expected).bit_length())
        self._keys = array("Q", bytes(8 * size))
        self._checks = array("I", bytes(4 * size))
        self._positions = array("I", bytes(4 * size))
        self._used = 0

    def __len__(self) -> int:
        """How many distinct ids were added."""
        return self._used

    def add(self, item_id: str, position: int) -> int | None:
        """Remember ``item_id`` at ``position``; return where it was first added, else ``None``.

        Positions are whatever the caller counts (line numbers, input indexes); ones past
        2**32 - 2 are not kept, and a repeat of such an id reports ``-1``.
        """
        # Python's own string hash (SipHash, keyed per process, cached on the string) twice,
        # over two different inputs: 96 independent bits for a fraction of blake2b's cost
        # (measured: 0.4 s instead of 1.5 s for 400,000 ids). Ids never leave the process,
        # so a per-process key is all that is needed.
        key = hash(item_id) & 0xFFFFFFFFFFFFFFFF or 1
        check = hash(item_id + "\x00") & 0xFFFFFFFF
        keys, checks = self._keys, self._checks
        mask = len(keys) - 1
        slot = key & mask
        # Each slot read once, in locals: a resume adds a million ids (1.5 -> 1.0 µs an id).
        while found := keys[slot]:
            if found == key and checks[slot] == check:
                earlier = self._positions[slot]
                return -1 if earlier == _NO_POSITION else earlier
            slot = (slot + 1) & mask
        used = self._used + 1
        if used * 2 > mask + 1:
            self._grow()
            keys, checks = self._keys, self._checks
            slot = self._slot(key, check)
        keys[slot] = key
        checks[slot] = check
        self._positions[slot] = position if 0 <= position < _NO_POSITION else _NO_POSITION
        self._used = used
        return None

    def _slot(self, key: int, check: int) -> int:
        mask = len(self._keys) - 1
        slot = key & mask
        while self._keys[slot] and (self._keys[slot] != key or self._checks[slot] != check):
            slot = (slot + 1) & mask
        return slot

    def _grow(self) -> None:
        old_keys, old_checks, old_positions = self._keys, self._checks, self._positions
        size = 2 * len(old_keys)
        self._keys = keys = array("Q", bytes(8 * size))
        self._checks = checks = array("I", bytes(4 * size))
        self._positions = positions = array("I", bytes(4 * size))
        mask = size - 1
        for key, check, position in zip(old_keys, old_checks, old_positions, strict=True):
            if key:  # entries are distinct: the first free slot is the one
                slot = key & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot] = key
                checks[slot] = check
                positions[slot] = position
