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


def run_fresh_project(tmp_path: Path, source: str, *args: str) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_example.py").write_text(source, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("NANOGPT_API_KEY", None)
    env.pop("NANOGPT_BASE_URL", None)
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FRESH_PLUGINS, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return process.returncode, process.stdout + process.stderr


def test_installing_the_package_registers_the_plugins_the_example_needs():
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("nanogpt_async") == "nanogpt_async.testing.pytest_plugin"
    assert plugins.get("anyio") == "anyio.pytest_plugin"  # anyio is a dependency


def test_the_documented_example_passes_in_a_fresh_project(tmp_path):
    code, out = run_fresh_project(tmp_path, documented_example())

    assert code == 0, out
    passed = re.search(r"(\d+) passed", out)
    assert passed is not None, out
    assert int(passed.group(1)) >= 2, out  # both tests, on every installed backend
    assert "skipped" not in out
    assert "warning" not in out.lower()


def test_the_documented_example_passes_next_to_pytest_asyncio_in_strict_mode(tmp_path):
    code, out = run_fresh_project(tmp_path, documented_example(), "-p", "pytest_asyncio.plugin")

    assert code == 0, out
    assert "skipped" not in out


def test_without_the_marker_line_pytest_does_not_run_the_example(tmp_path):
    # Why the guide asks for the line: pytest alone fails async tests.
    source = documented_example().replace(MARKER_LINE, "")

    code, out = run_fresh_project(tmp_path, source)

    assert code != 0, out
    assert "async def functions are not natively supported" in out
