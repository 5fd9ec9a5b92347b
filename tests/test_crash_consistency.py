"""Crash consistency of the real CLI: SIGKILL at random moments, Ctrl-C, then a re-run.

What must hold: nothing recorded ok is ever lost or corrupt, no temp file survives the re-run,
and the extra paid generations never exceed what was in flight when the process died.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nanogpt_async._cli._commands import cli
from nanogpt_async._output._files import TEMP_SUFFIX
from nanogpt_async.testing import FakeNanoGPT, FakeServer

KEY = "ngk_crash_consistency_key_5150"
ITEMS = 48
CONCURRENCY = 6
DOWNLOADS = 3
#: What can be paid for but not yet recorded when the process dies: generations in flight plus
#: generated items still being downloaded and written.
IN_FLIGHT_BOUND = CONCURRENCY + DOWNLOADS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeNanoGPT(api_key=KEY, latency=0.03, latency_jitter=0.02, url_fallback_rate=0.3)
    with fake.run_in_thread() as running:
        yield running


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"crash test prompt number {i}" for i in range(ITEMS)) + "\n")
    return path


def _command(prompts: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nanogpt_async",
        "batch",
        str(prompts),
        "--out",
        str(out),
        "--concurrency",
        str(CONCURRENCY),
        "--download-concurrency",
        str(DOWNLOADS),
        "--rps",
        "1000",
        "--response-format",
        "url",
        "--progress",
        "none",
    ]


def _env(server: FakeServer) -> dict[str, str]:
    return {**os.environ, "NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}


def _rows(out: Path) -> list[dict[str, Any]]:
    """Manifest rows, tolerating a torn last line as the library's reader does."""
    manifest = out / "manifest.jsonl"
    if not manifest.exists():
        return []
    rows = []
    for line in manifest.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _wait_for_rows(out: Path, count: int, process: subprocess.Popen[bytes]) -> None:
    # Waits for a condition (rows written), bounded; nothing is asserted on timing.
    deadline = time.monotonic() + 30
    while len(_rows(out)) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _assert_folder_consistent(out: Path) -> dict[str, dict[str, Any]]:
    manifest = out / "manifest.jsonl"
    assert not manifest.exists() or KEY not in manifest.read_text(errors="replace")
    latest = {row["id"]: row for row in _rows(out)}
    for row in latest.values():
        if row["status"] != "ok":
            continue
        assert row["files"], row
        for entry in row["files"]:
            path = out / entry["path"]
            assert path.resolve().is_relative_to(out.resolve())
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry
    return latest


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_killed_at_a_random_moment_resumes_and_loses_nothing_paid_for(
    tmp_path, server, prompts, seed
):
    rng = random.Random(seed)
    out = tmp_path / "out"
    command, env = _command(prompts, out), _env(server)

    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_rows(out, rng.randint(0, ITEMS // 2), victim)
    time.sleep(rng.uniform(0, 0.05))  # a random moment, not necessarily between two rows
    victim.kill()
    victim.wait()
    ok_before = {i for i, row in _assert_folder_consistent(out).items() if row["status"] == "ok"}

    # The re-run in this process (the victim had to be one of its own): a process start saved.
    rerun = CliRunner().invoke(cli, command[3:], env=env)

    assert rerun.exit_code == 0, rerun.output
    latest = _assert_folder_consistent(out)
    assert len(latest) == ITEMS
    assert all(row["status"] == "ok" for row in latest.values())
    assert ok_before <= set(latest)
    assert not list(out.rglob(f"*{TEMP_SUFFIX}"))
    charged = server.fake.stats.generations_by_prompt
    extra = sum(charged.values()) - ITEMS
    assert 0 <= extra <= IN_FLIGHT_BOUND, charged
    assert KEY not in rerun.output


def test_ctrl_c_stops_gracefully_with_exit_130_and_saves_everything_generated(
    tmp_path, server, prompts
):
    out = tmp_path / "out"
    process = subprocess.Popen(
        _command(prompts, out), env=_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_rows(out, 5, process)

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    latest = _assert_folder_consistent(out)
    saved = {row["prompt"] for row in latest.values() if row["status"] == "ok"}
    # Every generation the server charged for was saved: graceful stop lets in-flight finish.
    assert set(server.fake.stats.generations_by_prompt) == saved
    assert len(saved) < ITEMS
    assert not list(out.rglob(f"*{TEMP_SUFFIX}"))
