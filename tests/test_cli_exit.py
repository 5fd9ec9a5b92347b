"""How the command line's process ends."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

import nanogpt_async._cli
from nanogpt_async._cli import main
from nanogpt_async._cli._startup import YOUNG_THRESHOLD, collector_paused
from nanogpt_async.testing import FakeNanoGPT
from tests._serving import run_python


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["no-such-command"], 2)])
def test_the_command_line_freezes_the_collector_before_its_process_ends(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], code: int
) -> None:
    # Frozen objects are left to the OS: the interpreter's last collections walked them all
    # (~0.1 s of CPU after a one-prompt batch, under load).
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    # Start-up's own collector settings (tested below, in a process of their own).
    monkeypatch.setattr(nanogpt_async._cli, "collector_paused", _no_pause)
    monkeypatch.setattr(nanogpt_async._cli, "collect_less_often", lambda: None)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code
    assert frozen == [True]


class _no_pause:  # noqa: N801 - stands in for a context manager function
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_batch_starts_without_cycle_collections_and_collects_its_run_less_often(
    tmp_path: Path,
) -> None:
    # Start-up's imports ran ~100 collections (0.1 s of CPU under load) that found no
    # garbage, and a 1,024-item run ~250 more (0.14 s; benchmark W10). Counted, not timed.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    out = tmp_path / "out"
    code = (
        "import gc, sys\n"
        "from nanogpt_async._cli import main\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and runs.append(1))\n"
        "try:\n"
        f"    main(['batch', {str(prompts)!r}, '-o', {str(out)!r}, '--progress', 'none',"
        " '--no-gallery'])\n"
        "except SystemExit as exited:\n"
        "    print(exited.code, len(runs), gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
    )
    fake = FakeNanoGPT(api_key="startup-key")
    with fake.run_in_thread() as server:
        done = run_python(["-c", code], server, "startup-key")
    status, collections, young_threshold, frozen = done.stdout.split()[-4:]

    assert status == "0"
    assert int(collections) <= 5  # 95 with the collector on at start-up and the default 700
    assert int(young_threshold) == YOUNG_THRESHOLD
    assert frozen == "True"
    record = json.loads((out / "manifest.jsonl").read_text())
    assert record["status"] == "ok"
    assert fake.stats.images_generated == len(record["files"]) == 1


def test_the_collector_is_paused_inside_and_back_on_only_where_it_was_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gc, "freeze", lambda: None)  # the suite's own objects stay as they are
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
