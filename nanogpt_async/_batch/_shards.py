"""Shards of one batch input: which lines a process does, and where it records them.

A shard ``I/N`` does the items whose input index (counting from 0, every line of the input
including the ones other shards do) is ``I`` modulo ``N``: every item lands in exactly one
shard whatever ``N`` is, and a shard's items do not depend on anything but the input. Each
shard records into its own manifest (``manifest.shard-0003-of-0008.jsonl``) and holds its own
folder lock, so the shards of one job can share an output folder on a shared file system.

The index can come from the environment of the job engine, so one command serves as the
template of every task: a Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``; the count from
``--shard-count`` or ``NANOGPT_SHARD_COUNT``) or a Slurm job array (``SLURM_ARRAY_TASK_ID``
minus ``SLURM_ARRAY_TASK_MIN``, of ``SLURM_ARRAY_TASK_COUNT``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from nanogpt_async._errors import ShardError

__all__ = [
    "SHARD_COUNT_ENV",
    "Shard",
    "resolve_shard",
    "shard_manifests",
]

#: The environment variable giving the shard count when only the index comes from the engine.
SHARD_COUNT_ENV = "NANOGPT_SHARD_COUNT"
_MANIFEST = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.jsonl")
_TEMP_INDEX = re.compile(r"\.(\d+)-")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the items whose input index is ``index`` modulo ``count``.

    Example:
        >>> shard = Shard(3, 8)
        >>> shard.manifest_name
        'manifest.shard-0003-of-0008.jsonl'
        >>> [i for i in range(20) if shard.owns(i)]
        [3, 11, 19]
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        """Refuse a shard that cannot exist."""
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ShardError(f"the shard count must be a whole number >= 1, got {self.count!r}")
        if (
            isinstance(self.index, bool)
            or not isinstance(self.index, int)
            or not 0 <= self.index < self.count
        ):
            raise ShardError(
                f"the shard index must be a whole number from 0 to {self.count - 1} (counting "
                f"from 0), got {self.index!r}"
            )

    def owns(self, index: int) -> bool:
        """Whether the item at input ``index`` (from 0) is this shard's."""
        return index % self.count == self.index

    def size(self, total: int) -> int:
        """How many of ``total`` input items are this shard's."""
        return len(range(self.index, total, self.count))

    @property
    def manifest_name(self) -> str:
        """This shard's manifest file name in the output folder."""
        return f"manifest.shard-{self.index:04d}-of-{self.count:04d}.jsonl"

    @property
    def lock_name(self) -> str:
        """This shard's lock file name in the output folder (one run per shard at a time)."""
        return f".nanogpt-batch.shard-{self.index:04d}-of-{self.count:04d}.lock"

    def owns_temp_file(self, name: str) -> bool:
        """Whether a temp file left in the folder is one of this shard's items' images.

        A shard sweeps only its own: the others may be writing theirs right now.
        """
        match = _TEMP_INDEX.match(name)
        return match is not None and self.owns(int(match.group(1)))

    def __str__(self) -> str:
        """``I/N``."""
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"3/8"`` -> ``Shard(3, 8)``.

        Raises:
            ShardError: not ``I/N`` with ``0 <= I < N``.
        """
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ShardError(
                f"a shard is I/N (this process's index counting from 0, of N shards) such as "
                f"3/8, or 'auto' to read it from the job engine's environment; got {text!r}"
            )
        return cls(int(match.group(1)), int(match.group(2)))


def _number(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ShardError(f"{name}={value!r} is not a whole number") from None


def resolve_shard(text: str, env: Mapping[str, str], count: int | None = None) -> Shard:
    """The shard ``--shard`` names: ``I/N``, or ``auto`` (from the job engine's environment).

    ``auto`` reads, in order: a Kubernetes Indexed Job's ``JOB_COMPLETION_INDEX`` (the count
    from ``count``, i.e. ``--shard-count``, else ``NANOGPT_SHARD_COUNT``); a Slurm array's
    ``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN`` (``--array=1-8`` gives 0 to 7), of
    ``SLURM_ARRAY_TASK_COUNT`` (``count`` overrides it).

    Example:
        >>> resolve_shard("auto", {"JOB_COMPLETION_INDEX": "2", "NANOGPT_SHARD_COUNT": "8"})
        Shard(index=2, count=8)
        >>> resolve_shard("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
        ...                        "SLURM_ARRAY_TASK_COUNT": "8"})
        Shard(index=4, count=8)

    Raises:
        ShardError: ``I/N`` is malformed, or ``auto`` finds no usable index or count.
    """
    if text.strip().lower() != "auto":
        shard = Shard.parse(text)
        if count is not None and count != shard.count:
            raise ShardError(f"--shard {text} says {shard.count} shards, --shard-count {count}")
        return shard
    count = count if count is not None else _number(env, SHARD_COUNT_ENV)
    k8s = _number(env, "JOB_COMPLETION_INDEX")
    if k8s is not None:
        if count is None:
            raise ShardError(
                "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not the number of "
                f"shards: pass --shard-count N or set {SHARD_COUNT_ENV} (the Job's completions)"
            )
        return Shard(k8s, count)
    task = _number(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        first = _number(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _number(env, "SLURM_ARRAY_TASK_STEP") or 1
        if step != 1:
            raise ShardError(
                f"SLURM_ARRAY_TASK_STEP is {step}: use a contiguous array (--array=0-7, "
                "optionally with %K to limit how many run at once), or pass --shard I/N"
            )
        count = count if count is not None else _number(env, "SLURM_ARRAY_TASK_COUNT")
        if count is None:
            raise ShardError(
                "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: pass --shard-count N"
            )
        return Shard(task - first, count)
    raise ShardError(
        "--shard auto found no shard index in the environment: it reads JOB_COMPLETION_INDEX "
        "(Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm array). Pass --shard I/N "
        "to give it yourself"
    )


def shard_manifests(folder: Path) -> Iterator[tuple[Shard, Path]]:
    """Every shard manifest in ``folder``, sorted by count then index."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _MANIFEST.fullmatch(path.name)
            if match is not None and path.is_file():
                index, count = int(match.group(1)), int(match.group(2))
                if index < count:
                    found.append((Shard(index, count), path))
    found.sort(key=lambda pair: (pair[0].count, pair[0].index))
    yield from found
