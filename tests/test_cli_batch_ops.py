"""The batch command as operators run it: two runs, SIGTERM/SIGHUP, stdin, a full disk.

Every fault test compares money: what the fake server charged against what the manifest
recorded. Waits are on conditions (bounded), never timed sleeps.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._cli import _batchrun
from nanogpt_async._cli._commands import cli
from nanogpt_async._input import _ids as ids_module
from nanogpt_async._input import _prompts as prompts_module
from nanogpt_async.testing import FakeServer, Fault
from tests._counting import hop_counter
from tests._recorded import recorded_items
from tests._waiting import wait_until

SECRET = "ngk_BATCH_OPS_SECRET_never_print_3141"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def env_for(server: FakeServer) -> dict[str, str]:
    return {**os.environ, "NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": server.base_url}


def rows(folder: Path) -> list[dict[str, Any]]:
    manifest = folder / "manifest.jsonl"
    if not manifest.exists():
        return []
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def ok_prompts(folder: Path) -> list[str]:
    return sorted(row["prompt"] for row in rows(folder) if row["status"] == "ok")


def settle(server: FakeServer) -> None:
    """Wait until the fake has finished (and charged) every generation it started."""
    wait_until(lambda: server.fake.stats.in_flight == 0, "the fake to finish its generations")


def batch_command(prompts: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nanogpt_async",
        "batch",
        prompts,
        "-o",
        str(out),
        "--concurrency",
        "4",
        "--progress",
        "none",
        *extra,
    ]


def start(server: FakeServer, command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        env=env_for(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(process: subprocess.Popen[str], stdin: str | None = None) -> tuple[str, str]:
    try:
        stdout, stderr = process.communicate(stdin, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert SECRET not in stdout + stderr
    assert "Traceback" not in stderr
    return stdout, stderr


def prompts_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt number {i}\n" for i in range(count)))
    return path


# -- item 5: one run per folder ----------------------------------------------------------------


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_a_second_run_into_a_busy_folder_exits_75_naming_the_holder_and_pays_for_nothing(
    fake_nanogpt, tmp_path
):
    out = tmp_path / "out"
    prompts = str(prompts_file(tmp_path, 400))
    first = start(fake_nanogpt, batch_command(prompts, out))
    try:
        wait_until(lambda: fake_nanogpt.fake.stats.in_flight > 0, "the first run to send")
        # The second run in this process: the folder's lock is the first process's either way,
        # and a process start (0.5 s) is saved.
        second = CliRunner().invoke(cli, batch_command(prompts, out)[3:], env=env_for(fake_nanogpt))
        still_running = first.poll() is None
        first.send_signal(signal.SIGINT)
    finally:
        _, first_err = finish(first)

    assert still_running
    assert second.exit_code == 75, second.output
    assert f"pid {first.pid}" in second.stderr
    assert "another run" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 130, first_err
    settle(fake_nanogpt)
    # Money: every charged generation is the first run's, and every one is recorded once.
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert set(charged.values()) == {1}
    assert sorted(charged) == ok_prompts(out)
    assert not list(out.glob("*.nanogpt-tmp"))


# -- item 6: SIGTERM and SIGHUP ----------------------------------------------------------------


@posix_only
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), pytest.param(signal.SIGHUP, 129)]
)
@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_sigterm_and_sighup_stop_gracefully_and_record_every_charged_item(
    fake_nanogpt, tmp_path, signum, code
):
    out = tmp_path / "out"
    process = start(fake_nanogpt, batch_command(str(prompts_file(tmp_path, 400)), out))
    try:
        wait_until(lambda: fake_nanogpt.fake.stats.in_flight >= 2, "generations in flight")
        process.send_signal(signum)
    finally:
        stdout, stderr = finish(process)

    assert process.returncode == code, stderr
    assert "stopping: finishing" in stderr
    assert "summary:" in stdout
    settle(fake_nanogpt)
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert charged
    assert sorted(charged) == ok_prompts(out)
    assert fake_nanogpt.fake.stats.generations == len(rows(out))


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_a_second_sigterm_aborts_and_keeps_the_manifest_consistent(fake_nanogpt, tmp_path):
    out = tmp_path / "out"
    process = start(fake_nanogpt, batch_command(str(prompts_file(tmp_path, 400)), out))
    try:
        wait_until(lambda: fake_nanogpt.fake.stats.in_flight > 0, "generations in flight")
        fake_nanogpt.fake.latency = 30.0  # the stop cannot complete before the second signal
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        assert "stopping: finishing" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
    finally:
        stdout, stderr = finish(process)
    assert process.returncode == 143, stderr
    assert "aborting" in stderr
    assert "summary:" in stdout
    # What was recorded was charged; the aborted generations are what a re-run pays again.
    assert set(ok_prompts(out)) <= set(fake_nanogpt.fake.stats.generations_by_prompt)


# -- item 8: a bad line read mid-run -----------------------------------------------------------


def stream_with_bad_line(
    server: FakeServer, out: Path, good: int, bad: bytes
) -> tuple[subprocess.Popen[bytes], bytes, bytes]:
    """Pipe ``good`` lines into ``batch -``, wait until requests are in flight, then ``bad``."""
    process = subprocess.Popen(
        batch_command("-", out),
        env=env_for(server),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        for i in range(good):
            process.stdin.write(json.dumps({"prompt": f"streamed {i}"}).encode() + b"\n")
        process.stdin.flush()
        wait_until(lambda: server.fake.stats.in_flight >= 2, "generations in flight")
        stdout, stderr = process.communicate(bad, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process, stdout, stderr


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_a_bad_line_on_stdin_mid_run_lets_paid_items_finish_then_exits_2_with_its_line(
    fake_nanogpt, tmp_path
):
    out = tmp_path / "out"
    process, stdout, stderr = stream_with_bad_line(
        fake_nanogpt, out, 8, b'{"prompt": "bad", "n": "two"}\n{"prompt": "never read"}\n'
    )
    text = stderr.decode()
    assert process.returncode == 2, text
    assert "error: <stdin> line 9: n must be a whole number" in text
    assert "Traceback" not in text
    assert b"summary:" in stdout
    settle(fake_nanogpt)
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert charged
    assert sorted(charged) == ok_prompts(out)
    assert "bad" not in charged


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_invalid_utf8_on_stdin_mid_run_exits_2_with_its_line_and_loses_nothing_paid(
    fake_nanogpt, tmp_path
):
    out = tmp_path / "out"
    process, stdout, stderr = stream_with_bad_line(
        fake_nanogpt, out, 6, b'{"prompt": "caf\xe9 au lait"}\n'
    )
    text = stderr.decode()
    assert process.returncode == 2, text
    assert "error: <stdin> line 7: not valid UTF-8 (byte 0xe9 at column 16)" in text
    assert "Traceback" not in text
    assert b"summary:" in stdout
    settle(fake_nanogpt)
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert charged
    assert sorted(charged) == ok_prompts(out)


# -- item 12: duplicate ids, Ctrl-C while counting, a full disk --------------------------------


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_repeated_id_in_a_prompt_file_fails_before_anything_is_sent(fake_nanogpt, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"id": "fox", "prompt": "a fox"}\n{"id": "owl", "prompt": "an owl"}\n'
        '{"id": "fox", "prompt": "another fox"}\n'
    )
    result = CliRunner().invoke(
        cli, ["batch", str(prompts), "-o", str(tmp_path / "o")], env=env_for(fake_nanogpt)
    )
    assert result.exit_code == 2
    assert "line 3: the id 'fox' is already used on line 1" in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 0


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_repeated_id_on_stdin_stops_before_the_repeat_is_sent(fake_nanogpt, tmp_path):
    stdin = "".join(json.dumps({"id": f"i{i}", "prompt": f"p{i}"}) + "\n" for i in range(5))
    stdin += json.dumps({"id": "i2", "prompt": "a different prompt"}) + "\n"
    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli, ["batch", "-", "-o", str(out)], env=env_for(fake_nanogpt), input=stdin
    )
    assert result.exit_code == 2
    assert "<stdin> line 6: the id 'i2' is already used on line 3" in result.stderr
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert "a different prompt" not in charged
    assert sorted(charged) == ok_prompts(out)


def _jsonl(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in ids))
    return path


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_checked_prompt_files_ids_are_checked_once_per_run_fresh_and_resumed(
    fake_nanogpt, tmp_path, monkeypatch
):
    # The check before the run proved them unique: the batch does not check them again (in
    # its id table, about 1 µs an id: a second of a million-item resume).
    checked: dict[str, list[str]] = {"file": [], "batch": []}
    real_hash, real_add = prompts_module._id_hash, ids_module.RepeatedIds.add

    def hashing(item_id):  # the file's check (`_HashedIds`)
        checked["file"].append(item_id)
        return real_hash(item_id)

    def adding(self, item_id, position):  # the batch's (`Preparer`), or a big file's
        checked["batch"].append(item_id)
        return real_add(self, item_id, position)

    monkeypatch.setattr(prompts_module, "_id_hash", hashing)
    monkeypatch.setattr(ids_module.RepeatedIds, "add", adding)
    out = tmp_path / "o"
    for ids in (["a", "b", "c"], ["a", "b", "c", "d", "e"]):  # fresh, then resumed
        result = CliRunner().invoke(
            cli,
            ["batch", str(_jsonl(tmp_path, ids)), "-o", str(out), "--progress", "none"],
            env=env_for(fake_nanogpt),
        )
        assert result.exit_code == 0, result.output
    assert checked == {"file": ["a", "b", "c", "a", "b", "c", "d", "e"], "batch": []}
    settle(fake_nanogpt)
    assert fake_nanogpt.fake.stats.generation_requests == 5
    assert ok_prompts(out) == [f"prompt {i}" for i in "abcde"]


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_resumed_prompt_file_is_read_and_triaged_4096_lines_per_worker_thread_hop(
    fake_nanogpt, tmp_path, monkeypatch
):
    out = tmp_path / "o"
    out.mkdir()
    recorded = recorded_items(out, 4097, ids="item-{}", prompts="prompt {}")
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in recorded))
    hops = hop_counter(monkeypatch)
    # No gallery: its 4,097 thumbnails (of files that are not images) were most of the test's
    # 1.7 s of CPU, and have nothing to do with reading and triaging the file.
    args = ["batch", str(path), "-o", str(out), "--progress", "none", "--no-gallery"]
    result = CliRunner().invoke(cli, args, env=env_for(fake_nanogpt))
    assert result.exit_code == 0, result.output
    assert _summary_value(result.stdout, "skipped (done before)") == "4097"
    assert fake_nanogpt.fake.stats.generation_requests == 0
    # Two lists of 4,096 and 1 (then the end), each triaged in one hop: not five of 1,024.
    names = [getattr(getattr(hop, "func", hop), "__name__", "") for hop in hops]
    assert (names.count("take"), names.count("triage")) == (3, 2)


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_repeated_id_written_after_the_check_is_never_sent(fake_nanogpt, tmp_path, monkeypatch):
    # The file checked clean, then a writer appended a repeat before the run read it: its ids
    # are no longer known unique, so the run stops before the unchecked lines, exit 2.
    path = _jsonl(tmp_path, ["fox", "owl"])
    real = _batchrun._count_records

    def then_appended(*args: Any) -> Any:
        counted = real(*args)
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"id": "fox", "prompt": "a second fox"}) + "\n")
        return counted

    monkeypatch.setattr(_batchrun, "_count_records", then_appended)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli, ["batch", str(path), "-o", str(out), "--progress", "none"], env=env_for(fake_nanogpt)
    )
    assert result.exit_code == 2, result.output
    assert "line 1: the file changed after it was checked before the run" in result.stderr
    settle(fake_nanogpt)
    assert fake_nanogpt.fake.stats.generation_requests == 0
    assert rows(out) == []


def test_ctrl_c_while_the_prompt_file_is_checked_exits_130_not_1(tmp_path, monkeypatch):
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_batchrun, "_count_records", interrupted)
    result = CliRunner().invoke(
        cli,
        ["batch", str(prompts_file(tmp_path, 3)), "-o", str(tmp_path / "o")],
        env={"NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": "http://127.0.0.1:9/api/v1"},
    )
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert "Aborted" not in result.output


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_pipe_as_prompt_file_is_streamed_not_emptied_by_the_upfront_check(fake_nanogpt, tmp_path):
    # `batch <(make-prompts) ...`: the path is a pipe, readable once (here in this process,
    # which holds the pipe: the command reads the path the same way, without a process start).
    out = tmp_path / "out"
    read, write = os.pipe()
    with os.fdopen(write, "w") as writer:
        writer.write("a fox\nan owl\n")
    try:
        done = CliRunner().invoke(
            cli, batch_command(f"/dev/fd/{read}", out)[3:], env=env_for(fake_nanogpt)
        )
    finally:
        os.close(read)
    assert done.exit_code == 0, done.output
    assert ok_prompts(out) == ["a fox", "an owl"]
    assert fake_nanogpt.fake.stats.generations == 2


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_full_disk_during_a_manifest_write_prints_the_folder_free_space_and_the_summary(
    fake_nanogpt, tmp_path, monkeypatch
):
    calls = {"n": 0, "lines": 0}

    def disk_full(fd: int, data: Any) -> int:
        calls["n"] += 1
        # The first write succeeds, every later one fails. Lines of items finishing together
        # share a write, so with the first two writes allowed a fast run could carry all ten
        # lines in two writes and never hit the full disk (seen under load).
        if calls["n"] <= 1:
            # Lines of items finishing together share a write: count lines, not writes.
            calls["lines"] += bytes(data).count(b"\n")
            return os.write(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest_module, "_write", disk_full)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["batch", str(prompts_file(tmp_path, 10)), "-o", str(out), "-c", "1", "--rps", "1000"],
        env=env_for(fake_nanogpt),
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 3, result.output
    assert "error: cannot write to the manifest" in result.stderr
    assert "No space left on device" in result.stderr
    assert f"free on the disk of '{out}'" in result.stderr
    assert "summary:" in result.stdout
    # Money: the summary counts every charged item; the manifest holds those it could write.
    charged = fake_nanogpt.fake.stats.generations
    ok = int(_summary_value(result.stdout, "ok"))
    failed = int(_summary_value(result.stdout, "failed"))
    assert ok == len(rows(out)) == calls["lines"]
    assert ok + failed == charged


def _summary_value(stdout: str, label: str) -> str:
    for line in stdout.splitlines():
        if line.strip().startswith(label + " "):
            return line.strip()[len(label) :].strip()
    raise AssertionError(f"no {label!r} in {stdout!r}")


# -- --retry-ambiguous -------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "charged", "code"), [((), 1, 1), (("--retry-ambiguous",), 2, 0)])
@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_retry_ambiguous_retries_a_reset_after_charge_and_pays_twice(
    fake_nanogpt, tmp_path, flag, charged, code
):
    fake_nanogpt.fake.enqueue(Fault(kind="reset_after_charge"))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["batch", "-", "-o", str(out), *flag], env=env_for(fake_nanogpt), input="a fox\n"
    )
    assert result.exit_code == code, result.output
    assert fake_nanogpt.fake.stats.generations == charged
    assert len([r for r in rows(out) if r["status"] == "ok"]) == (1 if flag else 0)


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_generate_takes_retry_ambiguous_too(fake_nanogpt, tmp_path):
    fake_nanogpt.fake.enqueue(Fault(kind="reset_after_charge"))
    result = CliRunner().invoke(
        cli,
        ["generate", "a fox", "-o", str(tmp_path), "--retry-ambiguous"],
        env=env_for(fake_nanogpt),
    )
    assert result.exit_code == 0, result.output
    assert fake_nanogpt.fake.stats.generations == 2
    assert len(list(tmp_path.glob("a-fox*"))) == 1


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_a_hang_up_that_takes_the_terminal_away_still_records_every_charged_item(
    fake_nanogpt, tmp_path
):
    # A dropped ssh session: SIGHUP, and every later write to the terminal fails. Here the
    # terminal is a pipe whose reader is gone (EPIPE), the way a closed pty answers EIO.
    out = tmp_path / "out"
    command = batch_command(str(prompts_file(tmp_path, 400)), out)
    command[command.index("none")] = "plain"
    process = subprocess.Popen(
        [*command, "--progress-interval", "0"],
        env=env_for(fake_nanogpt),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: fake_nanogpt.fake.stats.in_flight >= 2, "generations in flight")
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()  # the summary has nowhere to go either
        process.stderr.close()
        process.send_signal(signal.SIGHUP)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 129
    settle(fake_nanogpt)
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert charged
    assert sorted(charged) == ok_prompts(out)


@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_bad_line_in_a_streamed_big_file_stops_there_and_saves_what_was_sent(
    fake_nanogpt, tmp_path, monkeypatch
):
    # Files over PRECOUNT_MAX_BYTES are streamed in chunks of 1,024 records: the good records
    # read before the bad line in the same chunk are handed to the batch, which stops at the
    # bad one (items not yet sent then are not started: a re-run does them).
    monkeypatch.setattr(_batchrun, "PRECOUNT_MAX_BYTES", 0)
    prompts = tmp_path / "big.jsonl"
    lines = [json.dumps({"prompt": f"p{i}"}) for i in range(10)]
    lines += ['{"prompt": "bad", "seed": "x"}', '{"prompt": "after"}']
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["batch", str(prompts), "-o", str(out)], env=env_for(fake_nanogpt)
    )
    assert result.exit_code == 2, result.output
    assert f"error: {prompts} line 11: seed" in result.stderr
    assert "summary:" in result.stdout
    charged = fake_nanogpt.fake.stats.generations_by_prompt
    assert charged
    assert sorted(charged) == ok_prompts(out)
    assert set(charged) <= {f"p{i}" for i in range(10)}


@posix_only
@pytest.mark.fake_nanogpt(api_key=SECRET)
def test_a_symlinked_manifest_is_refused_by_the_cli_before_anything_is_sent(fake_nanogpt, tmp_path):
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").symlink_to(elsewhere)
    result = CliRunner().invoke(
        cli, ["batch", str(prompts_file(tmp_path, 2)), "-o", str(out)], env=env_for(fake_nanogpt)
    )
    assert result.exit_code == 1
    assert "is a symbolic link; refusing to follow it" in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 0
    assert elsewhere.read_text() == ""
