"""The checkout's bytecode is written once per session, for child processes to read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._bytecode import write_bytecode

ROOT = Path(__file__).resolve().parents[1]


def test_stale_or_missing_bytecode_is_written_and_a_child_that_writes_none_reads_it(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "mod.py"
    module.write_text("VALUE = 'compiled'\n")
    (package / "broken.py").write_text("def (\n")  # left to the import to report
    (package / "test_mod.py").write_text("")  # pytest's to compile, asserts rewritten

    assert write_bytecode(tmp_path, ("pkg",)) == [package / "__init__.py", module]
    assert write_bytecode(tmp_path, ("pkg",)) == []  # current: nothing to do

    # The same size and mtime, other text: only a child reading the .pyc sees the old value,
    # so the file written is one the importer accepts as current.
    stat = module.stat()
    module.write_text("VALUE = 'from_src'\n")
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code = "import sys; sys.path.insert(0, sys.argv[1]); import pkg.mod; print(pkg.mod.VALUE)"
    child = subprocess.run(
        [sys.executable, "-B", "-I", "-S", "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "compiled"

    module.write_text("VALUE = 'edited, longer'\n")
    assert write_bytecode(tmp_path, ("pkg",)) == [module]


def test_the_session_wrote_the_checkouts_bytecode_before_the_tests() -> None:
    # Without the hook, modules no test imports (``__main__``, most of ``benchmarks``) would
    # still be missing, whether or not bytecode is written on import.
    assert write_bytecode(ROOT) == []
