"""``nanogpt-async batch`` and ``demo``: files, manifest, resume, inputs, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import FakeServer, Fault

SECRET = "ngk_BATCH_SECRET_never_print_7781"
secret_fake = pytest.mark.fake_nanogpt(api_key=SECRET)


def run(server: FakeServer, *args: str, key: str = SECRET, stdin: str | None = None) -> Result:
    env = {"NANOGPT_API_KEY": key, "NANOGPT_BASE_URL": server.base_url}
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)
    assert SECRET not in result.output
    return result


def manifest(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def prompts_file(tmp_path: Path, count: int, name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"prompt number {i}\n\n" for i in range(count)))
    return path


def summary_value(stdout: str, label: str) -> str:
    for line in stdout.splitlines():
        if line.strip().startswith(label):
            return line.strip()[len(label) :].strip()
    raise AssertionError(f"no {label!r} in {stdout!r}")


@secret_fake
def test_batch_writes_every_image_and_a_manifest_line_each(fake_nanogpt, tmp_path):
    out = tmp_path / "out"
    result = run(fake_nanogpt, "batch", str(prompts_file(tmp_path, 5)), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    records = manifest(out)
    assert len(records) == 5
    assert {r["status"] for r in records} == {"ok"}
    for record in records:
        assert (out / record["files"][0]["path"]).read_bytes().startswith(b"\x89PNG")
    # Not a terminal: plain progress lines ending with the final counts, then the summary.
    assert "done 5/5 failed 0 in-flight 0 cost $0.0250" in result.stderr
    assert summary_value(result.stdout, "ok") == "5"
    assert summary_value(result.stdout, "manifest") == str(out / "manifest.jsonl")


@secret_fake
def test_running_the_same_batch_again_resumes_and_pays_nothing(fake_nanogpt, tmp_path):
    prompts = prompts_file(tmp_path, 3)
    out = tmp_path / "out"
    assert run(fake_nanogpt, "batch", str(prompts), "-o", str(out)).exit_code == 0
    charged = fake_nanogpt.fake.stats.generations
    again = run(fake_nanogpt, "batch", str(prompts), "-o", str(out))
    assert again.exit_code == 0
    assert summary_value(again.stdout, "skipped (done before)") == "3"
    assert fake_nanogpt.fake.stats.generations == charged


@secret_fake
def test_some_failed_items_exit_1_and_a_rerun_retries_only_them(fake_nanogpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\nsomething forbidden\na cat\n")
    out = tmp_path / "out"
    result = run(fake_nanogpt, "batch", str(prompts), "-o", str(out))
    assert result.exit_code == 1
    assert "failed: item 1" in result.stderr
    assert "content_policy_violation" in result.stderr
    statuses = {r["prompt"]: r["status"] for r in manifest(out)}
    assert statuses == {"a fox": "ok", "something forbidden": "failed", "a cat": "ok"}
    requests = fake_nanogpt.fake.stats.generation_requests
    again = run(fake_nanogpt, "batch", str(prompts), "-o", str(out))
    assert again.exit_code == 1
    assert fake_nanogpt.fake.stats.generation_requests == requests + 1
    skipped = run(fake_nanogpt, "batch", str(prompts), "-o", str(out), "--no-retry-failed")
    assert skipped.exit_code == 0
    assert fake_nanogpt.fake.stats.generation_requests == requests + 1


@secret_fake
def test_a_bad_key_stops_the_batch_with_exit_3_after_a_handful_of_requests(fake_nanogpt, tmp_path):
    wrong = "ngk_wrong_key_for_the_batch_0001"
    result = run(
        fake_nanogpt,
        "batch",
        str(prompts_file(tmp_path, 200)),
        "-o",
        str(tmp_path / "o"),
        key=wrong,
    )
    assert result.exit_code == 3
    assert "401" in result.stderr
    assert wrong not in result.output
    assert fake_nanogpt.fake.stats.generation_requests < 50


@secret_fake
def test_no_balance_is_fatal_exit_3(fake_nanogpt, tmp_path):
    fake_nanogpt.fake.balance = 0.0
    result = run(fake_nanogpt, "batch", str(prompts_file(tmp_path, 5)), "-o", str(tmp_path / "o"))
    assert result.exit_code == 3
    assert "402" in result.stderr


@secret_fake
def test_transient_server_errors_are_retried_and_the_batch_succeeds(fake_nanogpt, tmp_path):
    fake_nanogpt.fake.enqueue(Fault.status(503), count=3)
    result = run(fake_nanogpt, "batch", str(prompts_file(tmp_path, 5)), "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.stderr
    assert summary_value(result.stdout, "requests (with retries)") == "8"


@secret_fake
def test_max_cost_stops_early_with_exit_4(fake_nanogpt, tmp_path):
    result = run(
        fake_nanogpt,
        "batch",
        str(prompts_file(tmp_path, 40)),
        "-o",
        str(tmp_path / "o"),
        "--max-cost",
        "0.02",
        "--concurrency",
        "2",
    )
    assert result.exit_code == 4, result.stderr
    assert "--max-cost" in result.stderr
    assert fake_nanogpt.fake.stats.charged_usd <= 0.02 + 2 * 0.005


@secret_fake
def test_jsonl_from_stdin_with_ids_and_per_item_fields(fake_nanogpt, tmp_path):
    lines = [
        {"id": "fox", "prompt": "a fox", "n": 2},
        {"id": "cat", "prompt": "a cat", "response_format": "url"},
    ]
    out = tmp_path / "out"
    result = run(
        fake_nanogpt,
        "batch",
        "-",
        "-o",
        str(out),
        "--size",
        "1024x1024",
        stdin="".join(json.dumps(line) + "\n" for line in lines),
    )
    assert result.exit_code == 0, result.stderr
    by_id = {r["id"]: r for r in manifest(out)}
    assert len(by_id["fox"]["files"]) == 2
    assert by_id["cat"]["params"]["response_format"] == "url"
    assert by_id["fox"]["params"]["size"] == "1024x1024"
    assert fake_nanogpt.fake.stats.downloads == 1
    # stdin has no known length: the progress total is "?"
    assert "done 2/? " in result.stderr


@secret_fake
def test_text_from_stdin(fake_nanogpt, tmp_path):
    out = tmp_path / "out"
    result = run(fake_nanogpt, "batch", "-", "-o", str(out), stdin="one\n\ntwo\n")
    assert result.exit_code == 0, result.stderr
    assert sorted(r["prompt"] for r in manifest(out)) == ["one", "two"]


@secret_fake
def test_csv_input_with_a_prompt_column(fake_nanogpt, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text('id,prompt,seed,n\nx1,"a fox, at night",7,1\nx2,a cat,,2\n')
    out = tmp_path / "out"
    result = run(fake_nanogpt, "batch", str(prompts), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    by_id = {r["id"]: r for r in manifest(out)}
    assert by_id["x1"]["prompt"] == "a fox, at night"
    assert by_id["x1"]["params"]["seed"] == 7
    assert len(by_id["x2"]["files"]) == 2


@secret_fake
def test_a_bad_line_fails_before_anything_is_sent(fake_nanogpt, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "x", "n": "two"}\n')
    result = run(fake_nanogpt, "batch", str(prompts), "-o", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "line 2" in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 0


@secret_fake
def test_a_bad_line_on_stdin_stops_the_batch_with_exit_2_and_its_line_number(
    fake_nanogpt, tmp_path
):
    stdin = '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c", "n": "x"}\n'
    result = run(fake_nanogpt, "batch", "-", "-o", str(tmp_path / "o"), stdin=stdin)
    assert result.exit_code == 2
    assert "error: <stdin> line 3: n must be a whole number" in result.stderr
    assert "Traceback" not in result.output


def test_a_missing_prompt_file_is_a_usage_error(tmp_path):
    env = {"NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": "http://127.0.0.1:9/api/v1"}
    result = CliRunner().invoke(cli, ["batch", str(tmp_path / "nope.txt"), "-o", "o"], env=env)
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_out_is_required():
    result = CliRunner().invoke(cli, ["batch", "-"], env={"NANOGPT_API_KEY": SECRET})
    assert result.exit_code == 2
    assert "--out" in result.stderr


@secret_fake
def test_progress_none_prints_only_the_summary(fake_nanogpt, tmp_path):
    result = run(
        fake_nanogpt,
        "batch",
        str(prompts_file(tmp_path, 3)),
        "-o",
        str(tmp_path / "o"),
        "--progress",
        "none",
    )
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "summary:" in result.stdout


# -- as a process -----------------------------------------------------------------------------


def process_env(server: FakeServer) -> dict[str, str]:
    return {**os.environ, "NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": server.base_url}


@secret_fake
def test_python_dash_m_batch_with_plain_output_and_resume(fake_nanogpt, tmp_path):
    prompts = prompts_file(tmp_path, 10, "prompts.jsonl")
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))
    argv = [sys.executable, "-m", "nanogpt_async", "batch", str(prompts), "-o", "out", "-f", "url"]
    first = subprocess.run(
        argv,
        env=process_env(fake_nanogpt),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    assert "done 10/10 failed 0" in first.stderr
    assert len(manifest(tmp_path / "out")) == 10
    # The resume in this process: the entry point is proven above, a process start is saved.
    second = run(fake_nanogpt, "batch", str(prompts), "-o", str(tmp_path / "out"), "-f", "url")
    assert second.exit_code == 0, second.output
    assert "skipped 10" in second.stderr
    for text in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert SECRET not in text
        assert "Traceback" not in text


def start_batch_process(
    fake_nanogpt: FakeServer, prompts: Path, out: Path
) -> subprocess.Popen[str]:
    """The real CLI as a subprocess: a batch at concurrency 4, no progress output."""
    command = [sys.executable, "-m", "nanogpt_async", "batch", str(prompts), "-o", str(out)]
    return subprocess.Popen(
        [*command, "--concurrency", "4", "--progress", "none"],
        env=process_env(fake_nanogpt),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_first_item(process: subprocess.Popen[str], out: Path) -> None:
    """Wait (bounded) until the batch has recorded an item; no timing is asserted."""
    deadline = time.monotonic() + 30
    manifest_file = out / "manifest.jsonl"
    while not (manifest_file.exists() and manifest_file.read_text().strip()):
        assert time.monotonic() < deadline, "no item finished"
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)


@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.1)
def test_ctrl_c_finishes_in_flight_items_keeps_the_manifest_and_exits_130(fake_nanogpt, tmp_path):
    out = tmp_path / "out"
    process = start_batch_process(fake_nanogpt, prompts_file(tmp_path, 400), out)
    try:
        wait_for_first_item(process, out)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "stopping: finishing" in stderr
    assert "Traceback" not in stderr
    records = manifest(out)
    assert 0 < len(records) < 400
    assert all(r["status"] == "ok" for r in records)
    assert int(summary_value(stdout, "not started")) > 0
    assert summary_value(stdout, "stopped").startswith("stopped: no new item started")
    # What was paid for is on disk and recorded; nothing else.
    assert fake_nanogpt.fake.stats.generations == len(records)


# -- demo -------------------------------------------------------------------------------------


def test_demo_runs_on_the_built_in_fake_and_resumes(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        cli, ["demo", "--count", "12", "--fast", "-o", str(out)], env={"NANOGPT_API_KEY": None}
    )
    assert result.exit_code == 0, result.output
    assert len(manifest(out)) == 12
    assert len(list(out.glob("*.png"))) == 12
    assert "done 12/12" in result.stderr
    assert f"images in {out}" in result.stderr
    again = CliRunner().invoke(cli, ["demo", "--count", "12", "--fast", "-o", str(out)])
    assert again.exit_code == 0
    assert "resumed: all 12 items" in again.stderr


def test_demo_as_a_process_needs_no_key_and_no_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGPT_")}
    done = subprocess.run(
        [sys.executable, "-m", "nanogpt_async", "demo", "--count", "6", "--fast"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(manifest(tmp_path / "nanogpt-demo")) == 6
    assert "manifest" in done.stdout


@pytest.mark.fake_nanogpt(api_key=SECRET, latency=0.2)
def test_a_second_ctrl_c_aborts_in_flight_items_and_exits_130(fake_nanogpt, tmp_path):
    out = tmp_path / "out"
    process = start_batch_process(fake_nanogpt, prompts_file(tmp_path, 400), out)
    try:
        wait_for_first_item(process, out)
        # Slow the server down so the stop cannot complete before the second Ctrl-C.
        fake_nanogpt.fake.latency = 30.0
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        assert "stopping: finishing" in process.stderr.readline()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "aborting" in stderr
    assert "Traceback" not in stderr
    assert all(r["status"] == "ok" for r in manifest(out))
    # What the docs call it (and BatchSummary.stopped_reason), not "stopped".
    assert summary_value(stdout, "stopped").startswith("cancelled: the requests in flight")


# -- prompt files ----------------------------------------------------------------------------


@secret_fake
def test_comment_lines_in_a_text_prompt_file_are_not_sent(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# foxes, for the catalogue\na red fox\n  # TODO more\n\\#1 fox\n")
    out = tmp_path / "out"

    result = run(fake_nanogpt, "batch", str(prompts), "-o", str(out))

    assert result.exit_code == 0, result.stderr
    sent = sorted(json.loads(line)["prompt"] for line in (out / "manifest.jsonl").open())
    assert sent == ["#1 fox", "a red fox"]
    assert fake_nanogpt.fake.stats.generation_requests == 2
    assert summary_value(result.stdout, "items") == "2"


# -- summary and messages --------------------------------------------------------------------


@secret_fake
def test_a_batch_from_stdin_stopped_by_its_budget_does_not_claim_a_total(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    stdin = "".join(f"prompt {i}\n" for i in range(100))
    out = tmp_path / "out"

    result = run(
        fake_nanogpt, "batch", "-", "-o", str(out), "--max-cost", "0.02", "-c", "2", stdin=stdin
    )

    assert result.exit_code == 4, result.stderr
    items = summary_value(result.stdout, "items")
    assert items.endswith(" read (the rest of the input was not read)"), items
    assert summary_value(result.stdout, "not started").endswith(
        " read + the unread rest of the input"
    )
    assert summary_value(result.stdout, "stopped") == "budget: --max-cost reached"
    assert "not started and the unread rest of the input" not in result.stderr
    assert "and the unread rest of the input not started" in result.stderr
    # Money: every charged image is recorded, the budget held.
    records = (out / "manifest.jsonl").read_text().splitlines()
    assert len(records) == fake_nanogpt.fake.stats.generations
    assert fake_nanogpt.fake.stats.charged_usd <= 0.02 + 1e-9


@secret_fake
def test_a_batch_from_stdin_read_to_the_end_counts_every_item(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    result = run(fake_nanogpt, "batch", "-", "-o", str(tmp_path / "o"), stdin="a\nb\nc\n")

    assert result.exit_code == 0, result.stderr
    assert summary_value(result.stdout, "items") == "3"
    assert "not started" not in result.stdout


@secret_fake
def test_batch_failure_lines_use_the_command_line_hints_too(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    fake_nanogpt.fake.enqueue(Fault.status(503))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")

    result = run(
        fake_nanogpt, "batch", str(prompts), "-o", str(tmp_path / "o"), "--max-retries", "0"
    )

    assert result.exit_code == 1
    assert "failed: item 0" in result.stderr
    assert "retries are off (--max-retries 0)" in result.stderr


@secret_fake
def test_a_budget_without_a_price_names_the_max_cost_flag(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")

    result = run(
        fake_nanogpt, "batch", str(prompts), "-o", str(tmp_path / "o"),
        "--max-cost", "1", "-m", "no-such-model",
    )  # fmt: skip

    assert result.exit_code == 2, result.stderr
    assert "error: --max-cost needs a price estimate" in result.stderr
    assert "or run without --max-cost" in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 0


@secret_fake
def test_a_resume_sends_and_charges_only_the_new_items_and_counts_the_skipped_ones(
    fake_nanogpt, tmp_path
):
    lines = [json.dumps({"id": f"item-{i}", "prompt": f"prompt {i}"}) + "\n" for i in range(300)]
    first, everything = tmp_path / "first.jsonl", tmp_path / "all.jsonl"
    first.write_text("".join(lines[:120] + lines[130:280]))
    everything.write_text("".join(lines))
    out = tmp_path / "out"
    fast = ("--rps", "100000", "--no-gallery")
    assert run(fake_nanogpt, "batch", str(first), "-o", str(out), *fast).exit_code == 0
    stats = fake_nanogpt.fake.stats
    assert stats.generations == stats.generation_requests == 270
    charged = stats.charged_usd

    again = run(fake_nanogpt, "batch", str(everything), "-o", str(out), *fast)

    assert again.exit_code == 0, again.stderr
    assert stats.generations == stats.generation_requests == 270 + 30
    assert summary_value(again.stdout, "cost") == f"${stats.charged_usd - charged:.4f}"
    assert summary_value(again.stdout, "items") == "300"
    assert summary_value(again.stdout, "ok") == "30"
    assert summary_value(again.stdout, "skipped (done before)") == "270"
    assert "done 300/300 failed 0 skipped 270" in again.stderr
    latest = {record["id"]: record for record in manifest(out)}
    assert len(latest) == 300
    assert {record["status"] for record in latest.values()} == {"ok"}
