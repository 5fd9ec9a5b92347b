"""generate and edit as people and scripts use them: file names that never overwrite, --json.

Driven through the real command (click's runner) against the fake server (issue 13, item 5).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import FakeServer, Fault, make_png

SECRET = "ngk_GENERATE_FILES_SECRET_never_print_4410"
secret_fake = pytest.mark.fake_nanogpt(api_key=SECRET)


def run(server: FakeServer, *args: str) -> Result:
    env = {"NANOGPT_API_KEY": SECRET, "NANOGPT_BASE_URL": server.base_url}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert SECRET not in result.output
    return result


def names(result: Result) -> list[str]:
    return [Path(line).name for line in result.stdout.splitlines()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- generate and edit: file names ------------------------------------------------------------


@secret_fake
def test_generate_names_one_image_after_the_prompt_even_when_other_files_start_alike(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    (tmp_path / "a-fox-in-snow.png").write_bytes(b"someone else's")
    (tmp_path / "a-foxglove.txt").write_text("notes")

    result = run(fake_nanogpt, "generate", "a fox", "-o", str(tmp_path))

    assert result.exit_code == 0, result.stderr
    assert names(result) == ["a-fox.png"]
    assert (tmp_path / "a-fox-in-snow.png").read_bytes() == b"someone else's"


@secret_fake
def test_generate_twice_with_n_2_adds_v2_to_each_name_and_keeps_the_first_images(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    first = run(fake_nanogpt, "generate", "a fox", "-n", "2", "-o", str(tmp_path))
    kept = {name: sha256(tmp_path / name) for name in names(first)}
    second = run(fake_nanogpt, "generate", "a fox", "-n", "2", "-o", str(tmp_path))

    assert names(first) == ["a-fox-0.png", "a-fox-1.png"]
    assert names(second) == ["a-fox-0-v2.png", "a-fox-1-v2.png"]
    assert {name: sha256(tmp_path / name) for name in kept} == kept
    assert len(list(tmp_path.iterdir())) == 4
    assert fake_nanogpt.fake.stats.images_generated == 4


@secret_fake
def test_generate_never_writes_through_a_symlink_at_its_file_name(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cat.png").symlink_to(target)

    result = run(fake_nanogpt, "generate", "a cat", "--name", "cat", "-o", str(tmp_path / "out"))

    assert result.exit_code == 0, result.stderr
    assert names(result) == ["cat-v2.png"]
    assert target.read_bytes() == b"precious"


# -- --json -----------------------------------------------------------------------------------


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@secret_fake
def test_generate_json_prints_one_object_per_image_and_nothing_else_on_stdout(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    result = run(
        fake_nanogpt, "generate", "a red fox", "-n", "3", "-m", "hidream", "-s", "1024x1024",
        "--seed", "7", "-o", str(tmp_path), "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    lines = json_lines(result)  # every stdout line is JSON
    assert [line["index"] for line in lines] == [0, 1, 2]
    for line in lines:
        path = Path(line["path"])
        assert path.parent == tmp_path
        assert line["sha256"] == sha256(path)
        assert line["bytes"] == path.stat().st_size
        assert line["request_id"].startswith("req_")
        assert (line["model"], line["size"], line["seed"]) == ("hidream", "1024x1024", 7)
        assert (line["operation"], line["prompt"]) == ("generate", "a red fox")
    # The costs add up to what the account was charged; the human line is on stderr.
    assert sum(line["cost"] for line in lines) == pytest.approx(fake_nanogpt.fake.stats.charged_usd)
    assert [line["request_cost"] for line in lines] == [pytest.approx(0.015)] * 3
    assert f"request id {lines[0]['request_id']}" in result.stderr
    assert "cost $0.0150" in result.stderr


@secret_fake
def test_edit_json_prints_one_object_per_image(fake_nanogpt: FakeServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_png("photo"))

    result = run(
        fake_nanogpt, "edit", str(photo), "make it snow", "-m", "gpt-image-1", "-n", "2",
        "-o", str(tmp_path / "out"), "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    lines = json_lines(result)
    assert [(line["index"], line["operation"]) for line in lines] == [(0, "edit"), (1, "edit")]
    assert [Path(line["path"]).name for line in lines] == [
        "make-it-snow-0.png",
        "make-it-snow-1.png",
    ]
    assert all(line["sha256"] == sha256(Path(line["path"])) for line in lines)
    assert fake_nanogpt.fake.stats.edit_requests == 1


@secret_fake
def test_generate_json_failure_prints_nothing_on_stdout(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    result = run(fake_nanogpt, "generate", "something forbidden", "-o", str(tmp_path), "--json")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: NanoGPT answered 400")


@secret_fake
def test_an_unreadable_image_does_not_cost_the_others_of_its_request(
    fake_nanogpt: FakeServer, tmp_path: Path
) -> None:
    fake_nanogpt.fake.enqueue(Fault.item_without_image())  # the first item has no image

    result = run(fake_nanogpt, "generate", "a fox", "-n", "2", "-o", str(tmp_path))

    assert result.exit_code == 1
    assert names(result) == ["a-fox-1.png"]  # the second image, paid for, is saved
    assert (tmp_path / "a-fox-1.png").read_bytes().startswith(b"\x89PNG")
    assert "error: image 0 has neither 'url' nor 'b64_json'" in result.stderr
    assert "cost $0.0100" in result.stderr
    assert fake_nanogpt.fake.stats.images_generated == 2
