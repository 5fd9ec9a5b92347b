"""Mutation scores per module from the last ``mutmut run`` (run by ``nox -s mutation``).

Reads ``mutmut results --all true`` and ``tools/mutation_equivalents.txt`` (surviving mutants
that change no behaviour, one per line with the reason after ``#``), and prints for each
mutated module: mutants, killed, equivalent, survived, and the score
``(killed + equivalent) / mutants``. A listed equivalent that no longer survives (or no
longer exists) is reported, so the list stays true as the code moves.

Usage: ``python tools/mutation_score.py [--fail-under 90]``.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from pathlib import Path

EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.txt")
#: mutmut's statuses that count as "the tests noticed": failed, timed out, or refused by types.
CAUGHT = {"killed", "timeout", "caught by type check"}


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


def main() -> int:
    """Print the table; exit 1 if a module scores under ``--fail-under``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail-under", type=float, default=0.0)
    args = parser.parse_args()
    statuses = _results()
    equivalents = _equivalents()
    per_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for name, status in statuses.items():
        module = name.split(".x\u01c1")[0].rsplit("__mutmut_", 1)[0]
        if ".x\u01c1" not in name:
            module = module.rsplit(".", 1)[0]
        counts = per_module[module]
        counts["mutants"] += 1
        if status in CAUGHT:
            counts["killed"] += 1
        elif status == "survived" and name in equivalents:
            counts["equivalent"] += 1
        elif status in {"survived", "no tests"}:
            counts["survived"] += 1
        else:
            counts["other"] += 1
    worst = 100.0
    print(f"{'module':45} {'mutants':>7} {'killed':>6} {'equiv':>5} {'alive':>5} {'score':>6}")
    for module in sorted(per_module):
        c = per_module[module]
        score = 100.0 * (c["killed"] + c["equivalent"]) / max(1, c["mutants"])
        worst = min(worst, score)
        print(
            f"{module:45} {c['mutants']:7} {c['killed']:6} {c['equivalent']:5} "
            f"{c['survived'] + c['other']:5} {score:5.1f}%"
        )
    stale = [n for n in equivalents if statuses.get(n) != "survived"]
    for name in stale:
        print(f"note: listed as equivalent but not a survivor now: {name}", file=sys.stderr)
    return 1 if worst < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
