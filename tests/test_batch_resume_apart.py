"""A big manifest's recorded files are checked by another process while the batch goes on.

The index is ready as soon as the lines are read; an item recorded nowhere is sent at once, and a
recorded one waits only for its own verdict. What must not change: a damaged or missing file is
regenerated (exactly once), an intact one never is, nothing is paid twice, and the fake's
charges equal what the run recorded.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from nanogpt_async._batch import _filecheck as filecheck_module
from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch import _resume as resume_module
from nanogpt_async._batch._filecheck import CHECKED_TO, TempListing
from nanogpt_async._batch._manifest import (
    ManifestIndex,
    ManifestWriter,
    check_files,
    iter_records,
    read_manifest,
    sweep_temp_files,
)
from nanogpt_async._batch._shards import Shard
from nanogpt_async._output._files import TEMP_SUFFIX
from tests._counting import open_counter
from tests._recorded import entry, record, recorded_items
from tests._serving import Serve, fake_client, fake_servers
from tests._waiting import until, within

KEY = "ngk_resume_apart_SECRET_3"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


#: A gate nobody opened opens itself after this long, and the test fails saying so. Without it,
#: a test that failed or stalled while a batch waited at the gate for the check's verdicts
#: hung its xdist worker until pytest-timeout killed it (120 s), with no word of what it
#: waited for (CI, once: the batch's cancellation waited for a check that nobody let through).
GATE_LIMIT = 45.0


class Gate:
    """Starts the file check's process behind a gate: it checks nothing until `open`."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        #: Opened, by the test or by the watchdog (`forced`).
        self.opened = False
        self.forced = False
        self._lock = threading.Lock()
        self._watchdog = threading.Timer(GATE_LIMIT, self._force)
        self._watchdog.daemon = True
        self._watchdog.start()

    def spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        waiting = "import os, sys; os.read(0, 1); os.execv(sys.executable, sys.argv[1:])"
        process = subprocess.Popen(
            [sys.executable, "-c", waiting, sys.executable, *command[1:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        with self._lock:
            self.processes.append(process)
            if self.opened:
                _let_through(process)
        return process

    @property
    def started(self) -> bool:
        return bool(self.processes)

    def open(self) -> None:
        with self._lock:
            self.opened = True
            for process in self.processes:
                _let_through(process)

    def _force(self) -> None:
        self.forced = True
        self.open()

    def close(self) -> None:
        """Stop the watchdog; kill and reap the processes still running."""
        self._watchdog.cancel()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdin is not None:
                process.stdin.close()
            if process.stdout is not None:
                process.stdout.close()


def _let_through(process: subprocess.Popen[bytes]) -> None:
    stdin = process.stdin
    if stdin is not None and not stdin.closed:
        with contextlib.suppress(BrokenPipeError):  # killed already
            stdin.write(b"go")
            stdin.close()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Every manifest checked apart, by a process that waits for the gate to open."""
    monkeypatch.setattr(manifest_module, "_CHECK_APART_BYTES", 0)
    gate = Gate()
    monkeypatch.setattr(filecheck_module, "spawn", gate.spawn)
    yield gate
    gate.close()
    assert not gate.forced, (
        f"the file check's gate was still closed after {GATE_LIMIT:g} s, and its watchdog opened "
        "it: the test neither opened it nor ended (a batch waiting for the check's verdicts, or "
        "stuck stopping while it waited)"
    )


def _damage(folder: Path) -> None:
    """Two recorded files damaged: one gone, one rewritten with the same size."""
    (folder / "old-5.png").unlink()
    (folder / "old-9.png").write_bytes(b"IMAGE 9")


async def test_a_new_item_is_sent_while_the_recorded_files_are_still_being_checked(
    serve: Serve, tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    recorded = recorded_items(tmp_path, 20, ids="old-{}", prompts="old prompt {}")
    _damage(tmp_path)
    monkeypatch.setattr(resume_module, "_TRIAGE_CHUNK", 1)  # the new item in a chunk of its own
    new = [{"id": "new-0", "prompt": "new prompt 0"}, {"id": "new-1", "prompt": "new prompt 1"}]
    stats = server.fake.stats
    opened = open_counter(monkeypatch)
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(
            [new[0], *recorded, new[1]], output_dir=tmp_path, rps=None
        )
        with within(60, "the resume"):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(batch.run)
                # Its charge, not its request: the fake counts a request as it comes in, and
                # charges it after reading its body. A look in between once found it sent and
                # not charged, and the test failed: then hung, as the batch's cancellation
                # waited for the check held at the gate (fixed: `Verdicts.interrupt`).
                await until(lambda: stats.generations >= 1, "the new item's charge")
                # Sent and charged while the check has not even started on any recorded file.
                assert gate.started
                assert all(process.poll() is None for process in gate.processes)
                assert stats.generations_by_prompt == {"new prompt 0": 1}
                gate.open()
    summary = batch.summary
    assert (summary.ok, summary.skipped, summary.failed) == (4, 18, 0)
    # The damaged two were regenerated once each, the new ones sent once each, nothing else.
    assert stats.generations_by_prompt == {
        "new prompt 0": 1,
        "new prompt 1": 1,
        "old prompt 5": 1,
        "old prompt 9": 1,
    }
    assert stats.generation_requests == stats.generations == 4
    assert summary.cost == pytest.approx(stats.charged_usd)
    latest = {record["id"]: record for record in iter_records(tmp_path / "manifest.jsonl")}
    assert sum(record.get("cost") or 0 for record in latest.values()) == pytest.approx(
        stats.charged_usd
    )
    assert all((tmp_path / record["files"][0]["path"]).exists() for record in latest.values())
    # The check's verdicts decided: only the two damaged items' lines were read back.
    assert opened == [tmp_path / "manifest.jsonl"] * 3


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_a_resume_waiting_for_the_checks_verdicts_ends_at_once_when_stopped_or_cancelled(
    serve: Serve, tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    server = serve()
    recorded = recorded_items(tmp_path, 5, ids="old-{}", prompts="old prompt {}")
    monkeypatch.setattr(resume_module, "_TRIAGE_CHUNK", 1)  # the new item in a chunk of its own
    waiting = threading.Event()
    verdicts = filecheck_module.FileCheck.verdicts

    def waited_for(check: filecheck_module.FileCheck, *, wait: bool) -> Any:
        if wait:
            waiting.set()
        return verdicts(check, wait=wait)

    monkeypatch.setattr(filecheck_module.FileCheck, "verdicts", waited_for)
    stats = server.fake.stats
    new = {"id": "new-0", "prompt": "new prompt 0"}
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many([new, *recorded], output_dir=tmp_path, rps=None)
        with within(60, f"the batch's {how}"):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(batch.run)
                # The new item saved, and the next (recorded) one waiting for its verdict from
                # the check, held at its gate: it would wait for as long as the check takes.
                await until(
                    lambda: batch.progress.ok == 1 and waiting.is_set(),
                    "the new item's result and a wait for the check",
                )
                if how == "stop":
                    batch.stop()
                else:
                    tasks.cancel_scope.cancel()
    # It ended without the check going on (its gate never opened), and stopped the check.
    assert not gate.opened
    assert [process.poll() is not None for process in gate.processes] == [True]
    summary = batch.summary
    assert (summary.ok, summary.skipped, summary.failed) == (1, 0, 0)
    assert summary.stopped_reason == ("stopped" if how == "stop" else "cancelled")
    # Money: the one charge is recorded, with its cost.
    assert stats.generations_by_prompt == {"new prompt 0": 1}
    latest = {record["id"]: record for record in iter_records(tmp_path / "manifest.jsonl")}
    assert latest["new-0"]["cost"] == pytest.approx(stats.charged_usd)
    assert summary.cost == pytest.approx(stats.charged_usd)


async def test_a_resume_that_reads_skipped_results_never_waits_for_the_check(
    serve: Serve, tmp_path: Path, gate: Gate
) -> None:
    server = serve()
    recorded = recorded_items(tmp_path, 12, ids="old-{}", prompts="old prompt {}")
    _damage(tmp_path)
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(recorded, output_dir=tmp_path, rps=None)
        with within(60, "the resume"):
            async with batch:
                results = {result.id: result.status async for result in batch}
    # Decided the exact way (each skipped result needs its record read back anyway); the
    # check, never let through its gate, was stopped when the batch ended.
    assert sorted(item for item, status in results.items() if status == "ok") == ["old-5", "old-9"]
    assert list(results.values()).count("skipped") == 10
    assert server.fake.stats.generations == 2
    assert gate.started
    assert all(process.poll() is not None for process in gate.processes)


def _many_cases(folder: Path) -> list[str]:
    """A manifest of records in every state, with the files damaged as the ids say."""
    writer = ManifestWriter(folder / "manifest.jsonl")
    for name in ("same", "deleted", "rewritten", "grown", "replaced-by-link"):
        record(writer, name, "ok", [entry(folder, f"{name}.png", b"image " + name.encode())])
    record(writer, "failed", "failed", [])
    writer.append({"id": "not-json-to-orjson", "status": "ok", "files": [], "x": "\udc80"})
    record(writer, "no-files", "ok", [])
    two = [entry(folder, "two-1.png", b"one"), entry(folder, "two-2.png", b"two")]
    record(writer, "two-files", "ok", two)
    # A failed retry after an ok line, and an ok line after a failed one: the latest wins.
    record(writer, "retried", "ok", [entry(folder, "retried.png", b"first")])
    record(writer, "retried", "failed", [])
    record(writer, "fixed", "failed", [])
    record(writer, "fixed", "ok", [entry(folder, "fixed.png", b"second")])
    # Two ok lines of one id: only the latest one's files count.
    record(writer, "redone", "ok", [entry(folder, "redone.png", b"one")])
    record(writer, "redone", "ok", [entry(folder, "redone-v2.png", b"two")])
    record(writer, "redone-back", "ok", [entry(folder, "back.png", b"one")])
    record(writer, "redone-back", "ok", [entry(folder, "back-v2.png", b"two")])
    writer.close()
    (folder / "deleted.png").unlink()
    rewritten = folder / "rewritten.png"
    before = rewritten.stat()
    rewritten.write_bytes(b"IMAGE rewritten")
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    (folder / "grown.png").write_bytes(b"image grown, and more")
    (folder / "replaced-by-link.png").unlink()
    (folder / "replaced-by-link.png").symlink_to(folder / "same.png")
    (folder / "redone-v2.png").unlink()  # the latest line's file gone, the earlier one's there
    (folder / "back.png").unlink()  # the earlier line's file gone, the latest one's there
    return [
        "same",
        "deleted",
        "rewritten",
        "grown",
        "replaced-by-link",
        "failed",
        "not-json-to-orjson",
        "no-files",
        "two-files",
        "retried",
        "fixed",
        "redone",
        "redone-back",
        "absent",
    ]


_INTACT_CASES = {"same", "two-files", "fixed", "redone-back"}


def test_the_other_process_finds_intact_exactly_what_the_inline_check_finds(
    tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _many_cases(tmp_path)
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    try:
        assert gate.started  # built while the check waits at its gate
        assert len(index) == len(ids) - 1
        answers: list[list[bool]] = []
        asking = threading.Thread(target=lambda: answers.append(index.intact(ids)))
        asking.start()
        gate.open()
        asking.join()
    finally:
        index.close()
    assert {item for item, done in zip(ids, answers[0], strict=True) if done} == _INTACT_CASES
    monkeypatch.setattr(manifest_module, "_CHECK_APART_BYTES", 1 << 40)
    inline = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    by_line = dict(zip(ids, inline.intact(ids), strict=True))
    assert {item for item, done in by_line.items() if done} == _INTACT_CASES


class _Found:
    """A file check whose findings are given, batch by batch; a batch comes when waited for."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches: list[array[int] | None] = [array("Q", batch) for batch in batches]
        self.batches.append(None)
        self.taken = 0
        self.closed = False

    def verdicts(self, *, wait: bool) -> array[int] | None:
        if not wait:
            return array("Q")  # nothing came on its own
        self.taken += 1
        return self.batches.pop(0)

    def close(self) -> None:
        self.closed = True


def _found_by_the_check(folder: Path) -> list[int]:
    """What the check's process writes for ``folder``'s manifest."""
    out = io.BytesIO()
    manifest = folder / "manifest.jsonl"
    check_files(manifest, folder, manifest.stat().st_size, out)
    return list(array("Q", out.getvalue()))


def _line_starts(manifest: Path) -> list[int]:
    lines = manifest.read_bytes().splitlines(keepends=True)
    return [sum(map(len, lines[:i])) for i in range(len(lines) + 1)]


@pytest.mark.parametrize("checked_every", [1, 2, 1000])
def test_what_the_check_finds_is_what_the_inline_check_finds_however_it_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checked_every: int
) -> None:
    ids = _many_cases(tmp_path)
    monkeypatch.setattr(manifest_module, "_CHECKED_EVERY", checked_every)
    found = _found_by_the_check(tmp_path)
    monkeypatch.setattr(manifest_module, "_check_apart", lambda *_: _Found([found]))
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    intact = dict(zip(ids, index.intact(ids), strict=True))
    assert {item for item, done in intact.items() if done} == _INTACT_CASES


def test_the_check_names_the_lines_not_intact_and_how_far_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ManifestWriter(tmp_path / "manifest.jsonl")
    record(writer, "a", "ok", [entry(tmp_path, "a.png", b"a")])
    record(writer, "b", "failed", [])
    record(writer, "c", "ok", [entry(tmp_path, "c.png", b"c")])
    writer.close()
    manifest = tmp_path / "manifest.jsonl"
    with manifest.open("ab") as file:
        file.write(b"not a record\n\n")
    _record_after = ManifestWriter(manifest)
    record(_record_after, "d", "ok", [entry(tmp_path, "d.png", b"d")])
    _record_after.close()
    (tmp_path / "c.png").unlink()
    starts = _line_starts(manifest)
    monkeypatch.setattr(manifest_module, "_CHECKED_EVERY", 2)
    out = io.BytesIO()
    # Up to where "d" starts: "d" is this run's own line, written after the index was read.
    check_files(manifest, tmp_path, starts[5], out)
    assert list(array("Q", out.getvalue())) == [
        CHECKED_TO + starts[2],  # "a" intact, "b" failed: neither named
        starts[2],  # "c": its file is gone
        starts[3],  # not a record
        CHECKED_TO + starts[4],
        starts[4],  # a blank line: not a record either
        CHECKED_TO + starts[5],  # the end given
    ]


def test_a_check_that_cannot_open_the_folder_says_nothing(tmp_path: Path) -> None:
    recorded_items(tmp_path, 2, ids="old-{}", prompts="old prompt {}")
    out = io.BytesIO()
    check_files(tmp_path / "manifest.jsonl", tmp_path / "gone", 1 << 20, out)
    assert out.getvalue() == b""


def test_an_answer_waits_only_until_the_check_has_got_past_the_lines_asked_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded_items(tmp_path, 4, ids="old-{}", prompts="old prompt {}")
    (tmp_path / "old-2.png").unlink()
    starts = _line_starts(tmp_path / "manifest.jsonl")
    given = _Found([[CHECKED_TO + starts[2]], [starts[2], CHECKED_TO + starts[3]], []])
    monkeypatch.setattr(manifest_module, "_check_apart", lambda *_: given)
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    assert index.intact(["old-1", "absent", "old-0"]) == [True, False, True]
    assert given.taken == 1
    assert index.intact(["old-0", "old-2"]) == [True, False]
    assert given.taken == 2
    assert index.intact(["old-1"]) == [True]  # known: no wait
    assert given.taken == 2
    # The check ends without getting to "old-3": it is not known intact (the exact checks
    # decide), and nothing more is waited for.
    assert index.intact(["old-3", "old-0"]) == [False, True]
    assert given.taken == 4
    assert index.intact(["old-3"]) == [False]
    assert given.taken == 4
    index.close()
    assert not given.closed  # it had ended: nothing to stop


def test_records_are_not_intact_when_the_check_ends_without_a_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded_items(tmp_path, 3, ids="old-{}", prompts="old prompt {}")
    given = _Found([])  # the check ended at once (it could not read the folder, or died)
    monkeypatch.setattr(manifest_module, "_check_apart", lambda *_: given)
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    assert index.intact(["old-0", "old-1", "old-2", "old-3"]) == [False] * 4
    # The exact checks still find them done.
    found = index.finished(tmp_path, ["old-0", "old-1"], retry_failed=False)
    assert [recorded is not None for recorded in found] == [True, True]


def test_the_check_output_is_read_whole_however_the_pipe_cuts_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    numbers = [1, 2, CHECKED_TO + 3, (1 << 62) + 5]
    write = f"import sys; sys.stdout.buffer.write(bytes({list(array('Q', numbers).tobytes())}))"

    def writer(_: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", write], stdout=subprocess.PIPE)

    monkeypatch.setattr(filecheck_module, "spawn", writer)
    monkeypatch.setattr(filecheck_module, "_READ_SIZE", 3)  # a number cut in every read
    check = filecheck_module.FileCheck(tmp_path / "manifest.jsonl", tmp_path, 0)
    got: list[int] = []
    while (part := check.verdicts(wait=True)) is not None:
        got += part
    assert got == numbers
    check.close()


def test_without_the_other_process_the_files_are_checked_as_the_lines_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _many_cases(tmp_path)
    monkeypatch.setattr(manifest_module, "_CHECK_APART_BYTES", 0)

    def cannot_start(command: list[str]) -> subprocess.Popen[bytes]:
        raise OSError(11, "Resource temporarily unavailable", command[0])

    monkeypatch.setattr(filecheck_module, "spawn", cannot_start)
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    intact = dict(zip(ids, index.intact(ids), strict=True))
    assert {item for item, done in intact.items() if done} == _INTACT_CASES


def _open_descriptors() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for _ in fds.iterdir()) if fds.is_dir() else 0


def test_closing_the_index_stops_a_check_still_running(tmp_path: Path, gate: Gate) -> None:
    recorded_items(tmp_path, 3, ids="old-{}", prompts="old prompt {}")
    before = _open_descriptors()
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    assert [process.poll() for process in gate.processes] == [None]
    index.close()
    assert gate.processes[0].poll() is not None
    gate.processes[0].stdin.close()  # type: ignore[union-attr] # the gate's own pipe
    assert _open_descriptors() == before  # the folder and the check's pipe are closed
    assert index.intact(["old-0"]) == [False]  # no verdict came: the exact checks decide
    index.close()  # twice is harmless


def test_an_interrupted_index_waits_no_more_for_the_check_and_the_exact_checks_decide(
    tmp_path: Path, gate: Gate
) -> None:
    recorded_items(tmp_path, 3, ids="old-{}", prompts="old prompt {}")
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    try:
        answers: list[list[bool]] = []
        asking = threading.Thread(target=lambda: answers.append(index.intact(["old-0", "old-1"])))
        asking.start()  # waits for the check, held at its gate (or is about to)
        index.verdicts.interrupt()
        asking.join()
        # Answered without the check: not known intact. Nor later: no answer waits any more.
        assert answers == [[False, False]]
        assert index.intact(["old-2"]) == [False]
        assert not gate.opened
        found = index.finished(tmp_path, ["old-0", "old-1", "old-2"], retry_failed=False)
        assert [recorded is not None for recorded in found] == [True, True, True]
    finally:
        index.close()
    assert [process.poll() is not None for process in gate.processes] == [True]


def test_a_small_manifest_is_checked_in_this_process(
    tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded_items(tmp_path, 3, ids="old-{}", prompts="old prompt {}")
    size = (tmp_path / "manifest.jsonl").stat().st_size
    monkeypatch.setattr(manifest_module, "_CHECK_APART_BYTES", size + 1)
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    assert index.intact(["old-0", "old-1", "old-2"]) == [True] * 3
    assert not gate.started
    monkeypatch.setattr(manifest_module, "_CHECK_APART_BYTES", size)
    read_manifest(tmp_path / "manifest.jsonl", tmp_path).close()
    assert gate.started


def test_the_check_process_gets_no_nanogpt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOGPT_API_KEY", KEY)
    monkeypatch.setenv("NANOGPT_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    show = "import os; print(sorted(k for k in os.environ if 'NANOGPT' in k or 'SOMETHING' in k))"
    process = filecheck_module.spawn([sys.executable, "-c", show])
    assert process.stdout is not None
    output = process.stdout.read()
    process.stdout.close()
    assert process.wait() == 0
    assert output.strip() == b"['SOMETHING_ELSE']"


def test_an_index_without_its_folder_starts_no_check(tmp_path: Path, gate: Gate) -> None:
    recorded_items(tmp_path, 2, ids="old-{}", prompts="old prompt {}")
    index = ManifestIndex.build(tmp_path / "manifest.jsonl")
    assert len(index) == 2
    assert not gate.started


def test_an_index_that_fails_to_build_stops_its_check(
    tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded_items(tmp_path, 3, ids="old-{}", prompts="old prompt {}")

    def unreadable(*_: object) -> list[int]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ManifestIndex, "_index_lines", unreadable)
    with pytest.raises(OSError, match="Input/output error"):
        read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    assert [process.poll() is not None for process in gate.processes] == [True]


@pytest.mark.parametrize(("attribute", "value"), [("executable", ""), ("frozen", True)])
def test_no_check_process_is_started_without_an_interpreter_to_run_it(
    tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch, attribute: str, value: object
) -> None:
    recorded_items(tmp_path, 3, ids="old-{}", prompts="old prompt {}")
    monkeypatch.setattr(sys, attribute, value, raising=False)
    index = read_manifest(tmp_path / "manifest.jsonl", tmp_path)
    assert index.intact(["old-0", "old-1", "old-2"]) == [True] * 3  # checked as it was read
    assert not gate.started


# -- the temp files a crash left, listed by another process beside a big manifest -------------


def _leftovers(folder: Path) -> Path:
    """A temp file a crashed run left, and two temp-named entries that are not temp files."""
    (folder / f"dir{TEMP_SUFFIX}").mkdir()
    (folder / f"link{TEMP_SUFFIX}").symlink_to(folder / "old-0.png")
    left = folder / f".old-3.png.dead{TEMP_SUFFIX}"
    left.write_bytes(b"half an image")
    return left


@pytest.mark.parametrize("listed", [True, False])
async def test_a_crashs_temp_file_beside_a_big_manifest_is_removed_and_never_a_result(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, listed: bool
) -> None:
    # Listing a million-file folder took 0.5-0.9 s before a resume's first request: another
    # process lists it while the manifest is read. Should it fail, the folder is listed here.
    monkeypatch.setattr(manifest_module, "_CHECK_APART_BYTES", 0)
    if not listed:
        monkeypatch.setattr(filecheck_module, "_LIST_CODE", "import sys; sys.exit(3)")
    scanned: list[object] = []
    real_scandir = os.scandir

    def scandir(path: object = ".") -> Any:
        scanned.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    server = serve()
    recorded = recorded_items(tmp_path, 5, ids="old-{}", prompts="old prompt {}")
    left = _leftovers(tmp_path)
    new = {"id": "new-0", "prompt": "new prompt 0"}
    async with fake_client(server, KEY) as client:
        summary = await client.images.generate_many(
            [*recorded, new], output_dir=tmp_path, rps=None
        ).run()
    assert not left.exists()
    assert (tmp_path / f"dir{TEMP_SUFFIX}").is_dir()
    assert (tmp_path / f"link{TEMP_SUFFIX}").is_symlink()
    assert (summary.ok, summary.skipped, summary.failed) == (1, 5, 0)
    assert server.fake.stats.generations_by_prompt == {"new prompt 0": 1}
    latest = {record["id"] for record in iter_records(tmp_path / "manifest.jsonl")}
    assert latest == {"old-0", "old-1", "old-2", "old-3", "old-4", "new-0"}
    assert (tmp_path in scanned) is not listed


def test_the_listing_finds_the_temp_names_and_a_shard_sweeps_only_its_own(tmp_path: Path) -> None:
    names = [f".{n:06d}-x-0.png.beef{TEMP_SUFFIX}" for n in range(4)]
    for name in [*names, "keep.png", f"{TEMP_SUFFIX}.not"]:
        (tmp_path / name).write_bytes(b"x")
    listing = TempListing(tmp_path, TEMP_SUFFIX)
    try:
        found = listing.names()
    finally:
        listing.close()
    assert found is not None
    assert sorted(found) == names
    assert sweep_temp_files(tmp_path, Shard(1, 2).owns_temp_file, found) == 2
    assert sorted(path.name for path in tmp_path.iterdir() if path.name in names) == [
        names[0],
        names[2],
    ]
