"""The command line's single-call commands, driven through the real entry point.

Quick cases go through click's ``CliRunner`` (in process); a few run ``python -m
nanogpt_async`` as a subprocess, exactly as a user would, against a fake server on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import FakeServer, Fault, make_png

#: A distinctive key: the tests assert it never appears in any output.
SECRET = "ngk_CLI_SECRET_never_print_9137"
secret_fake = pytest.mark.fake_nanogpt(api_key=SECRET)


def run(
    server: FakeServer | None, *args: str, key: str = SECRET, stdin: str | None = None
) -> Result:
    env = {"NANOGPT_API_KEY": key, "NANOGPT_BASE_URL": server.base_url if server else ""}
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    return result


def run_process(server: FakeServer, *args: str, key: str = SECRET, cwd: Path | None = None):
    env = {**os.environ, "NANOGPT_API_KEY": key, "NANOGPT_BASE_URL": server.base_url}
    done = subprocess.run(
        [sys.executable, "-m", "nanogpt_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert SECRET not in done.stdout
    assert SECRET not in done.stderr
    return done


# -- generate ---------------------------------------------------------------------------------


@secret_fake
def test_generate_saves_images_and_prints_paths_cost_and_balance(fake_nanogpt, tmp_path):
    result = run(fake_nanogpt, "generate", "a red fox in snow", "-n", "2", "-o", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    # Numbered from 0, like image.index, save_all() and batch file names.
    assert [p.name for p in paths] == ["a-red-fox-in-snow-0.png", "a-red-fox-in-snow-1.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert "cost $0.0100" in result.stderr
    assert "balance $99.9900" in result.stderr
    assert "request id req_" in result.stderr


@secret_fake
def test_generate_with_url_format_downloads_the_image(fake_nanogpt, tmp_path):
    result = run(fake_nanogpt, "generate", "a cat", "-f", "url", "-o", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert Path(result.stdout.strip()).read_bytes().startswith(b"\x89PNG")
    assert fake_nanogpt.fake.stats.downloads == 1


@secret_fake
def test_generate_never_overwrites_an_earlier_image(fake_nanogpt, tmp_path):
    first = run(fake_nanogpt, "generate", "a cat", "-o", str(tmp_path), "--name", "cat")
    second = run(fake_nanogpt, "generate", "a cat", "-o", str(tmp_path), "--name", "cat")
    assert Path(first.stdout.strip()).name == "cat.png"
    assert Path(second.stdout.strip()).name == "cat-v2.png"


@secret_fake
def test_generate_sends_input_images_and_mask_as_data_urls(fake_nanogpt, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_png("input"))
    mask = tmp_path / "mask.png"
    mask.write_bytes(make_png("mask"))
    result = run(
        fake_nanogpt,
        "generate",
        "as a watercolour",
        "--model",
        "flux-lora/inpainting",
        "--image",
        str(photo),
        "--mask",
        str(mask),
        "--strength",
        "0.6",
        "--seed",
        "7",
        "-o",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 0, result.stderr
    assert Path(result.stdout.strip()).exists()


@secret_fake
def test_generate_with_a_file_that_is_no_image_is_a_usage_error_and_sends_nothing(
    fake_nanogpt, tmp_path
):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    result = run(fake_nanogpt, "generate", "x", "--image", str(not_image))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: image ")
    assert fake_nanogpt.fake.stats.generation_requests == 0


@secret_fake
def test_generate_refused_by_content_policy_exits_1_with_one_line(fake_nanogpt, tmp_path):
    result = run(fake_nanogpt, "generate", "something forbidden", "-o", str(tmp_path))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: NanoGPT answered 400")
    assert "request id: req_" in lines[0]
    assert "Traceback" not in result.output


@secret_fake
def test_server_errors_are_retried_then_reported(fake_nanogpt, tmp_path):
    fake_nanogpt.fake.enqueue(Fault.status(503), count=3)
    result = run(fake_nanogpt, "generate", "x", "--max-retries", "2", "-o", str(tmp_path))
    assert result.exit_code == 1
    assert "503" in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 3


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        (Fault.status(402, {"error": "Insufficient balance", "status": 402}), "402"),
        (Fault.status(403), "403"),
        (Fault.daily_cap("rpd"), "daily"),
    ],
)
@secret_fake
def test_account_level_refusals_exit_3(fake_nanogpt, tmp_path, fault, needle):
    fake_nanogpt.fake.enqueue(fault)
    result = run(fake_nanogpt, "generate", "x", "-o", str(tmp_path))
    assert result.exit_code == 3, result.stderr
    assert needle in result.stderr.lower()


@secret_fake
def test_wrong_key_exits_3_and_never_prints_the_key(fake_nanogpt, tmp_path):
    wrong = "ngk_WRONG_key_also_secret_5521"
    for args in (["generate", "x", "-o", str(tmp_path)], ["balance"]):
        result = run(fake_nanogpt, *args, key=wrong)
        assert result.exit_code == 3
        assert "401" in result.stderr
        assert wrong not in result.output


def test_missing_key_is_a_usage_error_that_names_the_variable(tmp_path):
    result = run(None, "balance", key="")
    assert result.exit_code == 2
    assert "NANOGPT_API_KEY" in result.stderr


def test_unknown_option_is_a_usage_error():
    result = run(None, "generate", "x", "--bogus")
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_unreachable_server_exits_1_with_one_line(tmp_path):
    env = {"NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": "http://127.0.0.1:9/api/v1"}
    result = CliRunner().invoke(cli, ["balance", "--max-retries", "0"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: POST /api/check-balance to ")
    assert len(result.stderr.strip().splitlines()) == 1


# -- models and balance -----------------------------------------------------------------------


@secret_fake
def test_models_lists_ids_prices_and_capabilities(fake_nanogpt):
    result = run(fake_nanogpt, "models")
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split("\t") == ["id", "name", "USD per image", "capabilities", "max n"]
    by_id = {row.split("\t")[0]: row.split("\t") for row in rows}
    assert "1024x1024 $0.005" in by_id["hidream"][2]
    assert by_id["flux-lora/inpainting"][3] == "image-to-image, inpainting"


@secret_fake
def test_models_as_json(fake_nanogpt):
    result = run(fake_nanogpt, "models", "--json")
    models = json.loads(result.stdout)
    assert {m["id"] for m in models} >= {"hidream", "flux-kontext"}
    assert models[0]["pricing"]["1024x1024"] == 0.005


@secret_fake
def test_balance_prints_both_currencies(fake_nanogpt):
    fake_nanogpt.fake.balance = 12.5
    result = run(fake_nanogpt, "balance")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["USD", "12.50000000"]
    assert json.loads(run(fake_nanogpt, "balance", "--json").stdout)["usd_balance"] == "12.50000000"


@secret_fake
def test_api_key_and_base_url_options_override_the_environment(fake_nanogpt):
    env = {"NANOGPT_API_KEY": "wrong", "NANOGPT_BASE_URL": "http://127.0.0.1:9/api/v1"}
    result = CliRunner().invoke(
        cli, ["balance", "--api-key", SECRET, "--base-url", fake_nanogpt.base_url], env=env
    )
    assert result.exit_code == 0, result.stderr
    assert SECRET not in result.output


def test_help_lists_every_command_and_the_exit_codes():
    result = run(None, "--help")
    for command in ("generate", "batch", "models", "balance", "fake-server", "demo"):
        assert command in result.stdout
    assert "Exit codes" in result.stdout


def test_importing_the_package_does_not_import_the_cli():
    # (httpx itself imports click and rich when they are installed, so only ours is checked.)
    code = "import sys, nanogpt_async; print('nanogpt_async._cli' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- as a process -----------------------------------------------------------------------------


@secret_fake
def test_python_dash_m_generate_models_and_balance(fake_nanogpt, tmp_path):
    done = run_process(fake_nanogpt, "generate", "a lighthouse", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / done.stdout.strip()).exists()
    assert run_process(fake_nanogpt, "models").returncode == 0
    assert run_process(fake_nanogpt, "balance").stdout.startswith("USD")


@secret_fake
def test_python_dash_m_bad_key_exits_3_without_traceback_or_key(fake_nanogpt):
    done = run_process(fake_nanogpt, "balance", key="ngk_bad_" + SECRET[::-1])
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert SECRET[::-1] not in done.stderr


def test_fake_server_command_serves_until_ctrl_c(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "nanogpt_async", "fake-server", "--port", "0", "--balance", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("NANOGPT_BASE_URL=http://127.0.0.1:")
        env = {"NANOGPT_API_KEY": "test-key", "NANOGPT_BASE_URL": line.split("=", 1)[1]}
        result = CliRunner().invoke(cli, ["balance"], env=env)
        assert result.stdout.startswith("USD  3.00000000")
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "export NANOGPT_BASE_URL=" in err


def test_the_command_line_starts_without_httpx_s_command_line_or_the_gallery() -> None:
    # httpx imports its own CLI (rich, pygments: 90 ms of CPU) whenever click and rich are
    # installed, and the gallery is only needed once written: start-up time (benchmark W10).
    code = (
        "import sys\n"
        "from nanogpt_async._cli import main\n"
        "sys.argv = ['nanogpt-async', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "loaded = [name for name, module in sys.modules.items() if module is not None]\n"
        "print(sorted({m.split('.')[0] for m in loaded if m.startswith(('rich', 'pygments'))}"
        " | {m for m in loaded if m.startswith(('httpx._main', 'nanogpt_async._gallery'))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()

    assert out[-1] == "[]"
