"""The testing guide's pytest example, pasted into a fresh project, passes as documented.

Each test builds a project folder of its own (a bare ``pytest.ini``: none of this repository's
settings such as ``asyncio_mode = "auto"``) and runs pytest on it in a subprocess with exactly
the plugins ``pip install nanogpt-async pytest`` brings into a fresh virtualenv: ours and
anyio's (both by their ``pytest11`` entry points). The other plugins of this environment
(pytest-asyncio, respx, hypothesis...) are left out, as they would be there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "testing.md"
MARKER_LINE = "pytestmark = pytest.mark.anyio"
#: The pytest11 entry points of nanogpt-async and of its dependencies.
FRESH_PLUGINS = ("-p", "nanogpt_async.testing.pytest_plugin", "-p", "anyio.pytest_plugin")

pytestmark = pytest.mark.slow


def documented_example() -> str:
    """The guide's first Python block: a whole test module, as a reader would paste it."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    example = next(b for b in blocks if "def test_thumbnail_survives_a_flaky_server" in b)
    assert MARKER_LINE in example
    return example


def run_fresh_project(tmp_path: Path, modules: dict[str, str], *args: str) -> tuple[int, str]:
    """pytest (``-rA``: a line per test) on a fresh project of ``modules`` (name: source)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    for name, source in modules.items():
        (tmp_path / name).write_text(source, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("NANOGPT_API_KEY", None)
    env.pop("NANOGPT_BASE_URL", None)
    process = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"),
            *(*FRESH_PLUGINS, *args),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return process.returncode, process.stdout + process.stderr


def outcomes(out: str, module: str) -> list[str]:
    """The outcome (``PASSED``, ``FAILED``...) of each of ``module``'s tests in ``-rA`` lines."""
    return re.findall(rf"^([A-Z]+) {re.escape(module)}::", out, re.MULTILINE)


def test_installing_the_package_registers_the_plugins_the_example_needs():
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("nanogpt_async") == "nanogpt_async.testing.pytest_plugin"
    assert plugins.get("anyio") == "anyio.pytest_plugin"  # anyio is a dependency


def test_the_documented_example_passes_in_a_fresh_project_and_fails_without_its_marker_line(
    tmp_path,
):
    # One fresh project, one pytest run for both (each run costs ~1 s of CPU, most of it
    # importing the client and the fake): the example as pasted beside a copy without the
    # marker line, which shows why the guide asks for the line (pytest alone fails async
    # tests). The marker is per module, so neither module changes what the other does.
    example = documented_example()
    unmarked = example.replace(MARKER_LINE, "")
    modules = {"test_example.py": example, "test_unmarked.py": unmarked}

    code, out = run_fresh_project(tmp_path, modules)

    passed = outcomes(out, "test_example.py")
    assert len(passed) >= 2, out  # both tests, on every installed backend
    assert set(passed) == {"PASSED"}, out
    failed = outcomes(out, "test_unmarked.py")
    assert len(failed) == len(re.findall(r"^async def test_", unmarked, re.MULTILINE)), out
    assert set(failed) == {"FAILED"}, out
    assert code == 1, out  # tests failed: the unmarked ones, and only them
    assert "async def functions are not natively supported" in out
    assert "skipped" not in out
    assert "warning" not in out.lower()


def test_the_documented_example_passes_next_to_pytest_asyncio_in_strict_mode(tmp_path):
    modules = {"test_example.py": documented_example()}

    code, out = run_fresh_project(tmp_path, modules, "-p", "pytest_asyncio.plugin")

    assert code == 0, out
    assert set(outcomes(out, "test_example.py")) == {"PASSED"}, out
    assert "skipped" not in out
