"""Errors in the command line's words: flags and commands, not the Python API; true 5xx hints.

Driven through the real command (click's runner, or a fresh interpreter) against the fake server
(issue 13, item 5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nanogpt_async import AsyncNanoGPT, InternalServerError
from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import FakeServer, Fault
from tests._serving import run_python

SECRET = "ngk_HINTS_SECRET_never_print_2268"
secret_fake = pytest.mark.fake_nanogpt(api_key=SECRET)


def run(server: FakeServer, *args: str) -> Result:
    env = {"NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": server.base_url}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert SECRET not in result.output
    return result


# -- error hints in the command line's words --------------------------------------------------


@pytest.mark.fake_nanogpt(api_key="the-right-key")
def test_a_bad_key_hint_names_the_flag_and_the_variable_not_the_python_argument(
    fake_nanogpt: FakeServer,
) -> None:
    result = run(fake_nanogpt, "balance")

    assert result.exit_code == 3
    assert "Check NANOGPT_API_KEY (or --api-key)" in result.stderr
    assert "api_key=" not in result.stderr


@secret_fake
def test_an_unknown_model_hint_names_the_models_command(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    fake_nanogpt.fake.enqueue(Fault.status(404, {"error": {"message": "Model not found"}}))

    result = run(fake_nanogpt, "generate", "x", "-m", "no-such-model", "-o", str(tmp_path))

    assert result.exit_code == 1
    assert "`nanogpt-async models` lists them" in result.stderr
    assert "client.images" not in result.stderr


@secret_fake
def test_a_5xx_with_retries_off_does_not_claim_it_was_retried(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    fake_nanogpt.fake.enqueue(Fault.status(503))

    result = run(fake_nanogpt, "generate", "x", "--max-retries", "0", "-o", str(tmp_path))

    assert result.exit_code == 1
    assert "retries are off (--max-retries 0)" in result.stderr
    assert "persisted through" not in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 1


@secret_fake
def test_a_5xx_that_outlasts_the_retries_says_how_many_there_were(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    fake_nanogpt.fake.enqueue(Fault.status(503), count=2)

    result = run(fake_nanogpt, "generate", "x", "--max-retries", "1", "-o", str(tmp_path))

    assert result.exit_code == 1
    assert "persisted through 1 retry (--max-retries 1)" in result.stderr
    assert fake_nanogpt.fake.stats.generation_requests == 2


# -- install hint -----------------------------------------------------------------------------


def test_without_click_the_command_says_how_to_install_from_the_repository() -> None:
    code = (
        "import sys; sys.modules['click'] = None\n"
        "from nanogpt_async._cli import main\n"
        "main(['--help'])\n"
    )
    done = run_python(["-c", code], check=False)

    assert done.returncode == 2
    assert "git+https://github.com/nanogpt-async/nanogpt-async" in done.stderr
    assert "pip install '.[cli]'" in done.stderr


async def test_the_library_5xx_hint_is_true_with_retries_off(fake_nanogpt: FakeServer) -> None:
    fake_nanogpt.fake.enqueue(Fault.status(503))
    client = AsyncNanoGPT(
        api_key=fake_nanogpt.api_key, base_url=fake_nanogpt.base_url, max_retries=0
    )
    async with client:
        with pytest.raises(InternalServerError) as raised:
            await client.images.generate(prompt="x")
    assert "persisted through retries" not in str(raised.value)
    assert "retried first if the retry policy allows" in str(raised.value)
