"""Mutation scores per module from the last ``mutmut run`` (run by ``nox -s mutation``).

Reads ``mutmut results --all true`` and ``tools/mutation_equivalents.txt`` (surviving mutants
that change no behaviour, one per line with the reason after ``#``), and prints for each
mutated module: mutants, killed, equivalent, survived (alive), not run yet, and the score
``(killed + equivalent) / (mutants run)``. A listed equivalent that no longer survives (or no
longer exists) is reported, so the list stays true as the code moves.

Usage: ``python tools/mutation_score.py [--fail-under 90]``.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from collections import Counter
from pathlib import Path

EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.txt")
#: mutmut's statuses that count as "the tests noticed": failed, timed out, crashed the test
#: process, or refused by the type checker.
CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}
#: Not run yet: a quick run of one module leaves the other modules' mutants here.
UNRUN = {"not checked", "check was interrupted by user"}


def _equivalents() -> dict[str, str]:
    found: dict[str, str] = {}
    if not EQUIVALENTS.exists():
        return found
    for raw in EQUIVALENTS.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, why = line.partition("#")
        found[name.strip()] = why.strip()
    return found


def module_of(mutant: str) -> str:
    """The dotted module of a mutmut 3 mutant name.

    Functions are named ``{module}.x_{function}__mutmut_{n}``, methods
    ``{module}.x\u01c1{Class}\u01c1{method}__mutmut_{n}`` (``\u01c1`` is mutmut's separator).

    Example:
        >>> module_of("nanogpt_async._http._retry.x_should_retry__mutmut_3")
        'nanogpt_async._http._retry'
        >>> module_of("nanogpt_async._pacing._pacer.x\u01c1Pacer\u01c1wait__mutmut_12")
        'nanogpt_async._pacing._pacer'
    """
    stem = mutant.rsplit("__mutmut_", 1)[0]
    if ".x\u01c1" in stem:
        return stem.split(".x\u01c1", 1)[0]
    return stem.rsplit(".", 1)[0]


def _results() -> dict[str, str]:
    out = subprocess.run(
        ["mutmut", "results", "--all", "true"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    statuses: dict[str, str] = {}
    for raw in out.splitlines():
        name, sep, status = raw.strip().rpartition(": ")
        if sep:
            statuses[name] = status
    return statuses


def tally(statuses: dict[str, str], equivalents: dict[str, str]) -> dict[str, Counter[str]]:
    """Count each module's mutants by outcome: killed, equivalent, survived, unrun."""
    per_module: dict[str, Counter[str]] = collections.defaultdict(collections.Counter)
    for name, status in statuses.items():
        counts = per_module[module_of(name)]
        counts["mutants"] += 1
        if status in CAUGHT:
            counts["killed"] += 1
        elif status == "survived" and name in equivalents:
            counts["equivalent"] += 1
        elif status in UNRUN:
            counts["unrun"] += 1
        else:  # survived, no tests, suspicious, skipped: the tests did not notice
            counts["survived"] += 1
    return dict(per_module)


def score(counts: Counter[str]) -> float | None:
    """``(killed + equivalent) / mutants run``, in percent; ``None`` if none was run."""
    run = counts["mutants"] - counts["unrun"]
    return 100.0 * (counts["killed"] + counts["equivalent"]) / run if run else None


def stale_equivalents(statuses: dict[str, str], equivalents: dict[str, str]) -> list[str]:
    """Notes on listed equivalents that are gone, or were run and did not survive."""
    notes = []
    for name in equivalents:
        status = statuses.get(name)
        if status is None:
            notes.append(f"listed as equivalent but no such mutant now: {name}")
        elif status not in UNRUN and status != "survived":
            notes.append(f"listed as equivalent but {status} now: {name}")
    return notes


def main() -> int:
    """Print the table; exit 1 if a fully run module scores under ``--fail-under``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail-under", type=float, default=0.0)
    args = parser.parse_args()
    statuses = _results()
    equivalents = _equivalents()
    failing = False
    print(
        f"{'module':45} {'mutants':>7} {'killed':>6} {'equiv':>5} {'alive':>5} {'unrun':>5} score"
    )
    for module, c in sorted(tally(statuses, equivalents).items()):
        value = score(c)
        # Only a module whose every mutant was run can fail: a quick run leaves the others.
        failing |= value is not None and not c["unrun"] and value < args.fail_under
        print(
            f"{module:45} {c['mutants']:7} {c['killed']:6} {c['equivalent']:5} "
            f"{c['survived']:5} {c['unrun']:5} {'-' if value is None else f'{value:.1f}%'}"
        )
    for note in stale_equivalents(statuses, equivalents):
        print(f"note: {note}", file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
