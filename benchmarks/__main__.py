"""``python -m benchmarks``: run the workloads, write JSON results and a markdown table."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from benchmarks import _importtime
from benchmarks._harness import raise_fd_limit, run_workload, unavailable_reason
from benchmarks._report import markdown, verdicts, write
from benchmarks._workloads import WORKLOADS
from benchmarks.contenders import CONTENDERS

_PACKAGES = (
    "nanogpt-async",
    "httpx",
    "httpx-aiohttp",
    "aiohttp",
    "openai",
    "httpx2",
    "orjson",
    "pybase64",
    "anyio",
)


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open() as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    versions = {name: _version(name) for name in _PACKAGES}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_at_start": load,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="e.g. W1,W2")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload (median)")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of: {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--quick", action="store_true", help="shrink every workload ~10x")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/latest.json"), help="JSON results"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write the markdown table here"
    )
    parser.add_argument("--no-import-time", action="store_true", help="skip the import timing")
    return parser


def byte_compile_package() -> None:
    """Write the package's ``.pyc`` files, as installing it does, before anything is timed.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in this project's shells) or a fresh checkout, every
    contender process compiled the package's ~90 modules from source: 110 ms of CPU a process,
    counted as the CLI's start-up in W10 where no installed copy pays it. An installed package
    has them (pip compiles at install time); so does this run now.
    """
    import compileall

    import nanogpt_async

    compileall.compile_dir(Path(nanogpt_async.__file__).parent, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown += [c for c in wanted if c not in CONTENDERS]
    if unknown:
        sys.stderr.write(f"unknown workload/contender: {', '.join(unknown)}\n")
        return 2
    if args.rounds < 1:
        sys.stderr.write("--rounds must be at least 1\n")
        return 2
    raise_fd_limit()
    byte_compile_package()
    skipped = {}
    for name in wanted:
        reason = unavailable_reason(name)
        if reason is not None:
            skipped[name] = reason
            sys.stderr.write(f"skipping {name}: {reason}\n")
    runnable = [c for c in wanted if c not in skipped]
    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    results: dict[str, Any] = {
        "meta": {
            **info,
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{info['nproc']} x {info['cpu']}, Python {info['python']}",
            "rounds": args.rounds,
            "quick": args.quick,
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "skipped": skipped,
        "workloads": [],
    }
    if not args.no_import_time:
        results["import_time"] = _importtime.measure()
    for name in names:
        workload = WORKLOADS[name].quick() if args.quick else WORKLOADS[name]
        contenders = [c for c in CONTENDERS if c in runnable and c in workload.contenders]
        if not contenders:
            continue
        result = run_workload(workload, contenders, args.rounds)
        results["workloads"].append(result)
        for line in verdicts(result):
            sys.stderr.write(f"  {line}\n")
        write(results, args.out, args.markdown)  # after each workload: a crash keeps the rest
    took = dt.datetime.now(dt.timezone.utc) - started
    results["meta"]["took_s"] = took.total_seconds()
    write(results, args.out, args.markdown)
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
