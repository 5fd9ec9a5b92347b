"""A resume sizes its table of checked ids for the items it recorded, instead of growing it.

Growing `RepeatedIds` by doubling on the way to a million ids re-inserted two million of them
(0.29 s of 1.46 s); a re-run meets about the items it recorded, so `Triage` asks for that room
up front. Repeats are refused exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nanogpt_async._batch._lifecycle import Lifecycle
from nanogpt_async._batch._manifest import ManifestIndex
from nanogpt_async._batch._prepare import Preparer
from nanogpt_async._batch._resume import Resume, Triage
from nanogpt_async._batch._tally import Tally
from nanogpt_async._errors import RepeatedIdError
from nanogpt_async._input._ids import RepeatedIds


@pytest.mark.parametrize(
    ("expected", "slots"), [(0, 1024), (511, 1024), (512, 2048), (3000, 8192), (4095, 8192)]
)
def test_the_ids_table_starts_with_room_for_the_expected_ids_at_most_half_full(
    expected: int, slots: int
) -> None:
    ids = RepeatedIds(expected)
    assert (len(ids._keys), len(ids._checks), len(ids._positions)) == (slots, slots, slots)


def test_an_ids_table_sized_up_front_takes_its_ids_without_growing_and_finds_repeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = RepeatedIds(3000)
    monkeypatch.setattr(RepeatedIds, "_grow", lambda _: pytest.fail("grew"))
    assert [ids.add(f"id-{n}", n) for n in range(3000)] == [None] * 3000
    assert (ids.add("id-7", 3000), ids.add("id-2999", 3001), len(ids)) == (7, 2999, 3000)


def test_the_preparer_makes_room_for_expected_ids_only_before_it_checked_one() -> None:
    preparer = Preparer({}, Lifecycle(), Tally(None))
    preparer.expect_ids(3000)
    assert preparer._user_ids is not None
    assert len(preparer._user_ids._keys) == 8192
    preparer.prepare_now({"id": "a", "prompt": "one"}, 0)
    preparer.expect_ids(100_000)  # too late: the table holds "a" already, and is kept
    with pytest.raises(RepeatedIdError, match="item 1 has the id 'a' of item 0"):
        preparer.prepare_now({"id": "a", "prompt": "two"}, 1)


def recorded(tmp_path: Path, count: int) -> ManifestIndex:
    path = tmp_path / "manifest.jsonl"
    lines = (f'{{"id":"item-{i}","status":"ok","files":[]}}\n' for i in range(count))
    path.write_text("".join(lines))
    return ManifestIndex.build(path)


def test_a_resume_says_how_many_items_were_recorded(tmp_path: Path) -> None:
    index = recorded(tmp_path, 3000)
    assert Resume(index, tmp_path, retry_failed=False).recorded_items == 3000
    assert Resume(index, None, retry_failed=False).recorded_items == 0  # nothing checked
    assert Resume(None, tmp_path, retry_failed=False).recorded_items == 0


def test_a_resumed_input_gets_an_ids_table_sized_for_the_recorded_items(tmp_path: Path) -> None:
    preparer = Preparer({}, Lifecycle(), Tally(None))
    resume = Resume(recorded(tmp_path, 3000), tmp_path, retry_failed=False)
    Triage(
        iter([]),
        preparer=preparer,
        resume=resume,
        shard=None,
        lifecycle=Lifecycle(),
        tally=Tally(None),
        wanted=lambda: False,
    )
    assert preparer._user_ids is not None
    assert len(preparer._user_ids._keys) == 8192
