"""``client.images.edit``: the request it sends (respx), and end to end on the fake (library,
batch, prompt files, CLI), with money counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from click.testing import CliRunner

from nanogpt_async import (
    APIConnectionError,
    AsyncNanoGPT,
    BadRequestError,
    BatchItem,
    ImageInputError,
    InvalidInputError,
    ItemResult,
)
from nanogpt_async._cli._commands import cli
from nanogpt_async._errors import PromptFileError
from nanogpt_async._input._prompts import read_prompts
from nanogpt_async.testing import FakeNanoGPT, FakeServer, Fault, make_png
from tests.conftest import BASE, KEY

EDITS = f"{BASE}/images/edits"


def ok_body(png_b64: str, n: int = 1) -> dict[str, Any]:
    return {
        "created": 1700000000,
        "data": [{"b64_json": png_b64} for _ in range(n)],
        "cost": 0.005 * n,
        "paymentSource": "USD",
        "remainingBalance": 9.99,
    }


# -- what the client sends ----------------------------------------------------------------------


async def test_edit_posts_the_image_mask_and_fields_to_the_edits_path(
    client: AsyncNanoGPT, mock_api: respx.MockRouter, png: bytes, png_b64: str, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png)
    route = mock_api.post(EDITS).respond(
        200, json=ok_body(png_b64, 2), headers={"X-Request-ID": "req_7"}
    )

    response = await client.images.edit(
        prompt="make it snow",
        image=photo,
        mask=png,
        model="flux-lora/inpainting",
        n=2.0,  # type: ignore[arg-type] # a whole float is the integer 2
        size="1024x1024",
        response_format="b64_json",
        user="u1",
    )

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.url.path == "/api/v1/images/edits"
    body = json.loads(request.content)
    data_url = f"data:image/png;base64,{png_b64}"
    assert body == {
        "prompt": "make it snow",
        "imageDataUrl": data_url,
        "maskDataUrl": data_url,
        "model": "flux-lora/inpainting",
        "n": 2,
        "size": "1024x1024",
        "response_format": "b64_json",
        "user": "u1",
    }
    assert response.request_id == "req_7"
    assert [await image.read() for image in response.data] == [png, png]


async def test_edit_with_several_images_sends_image_data_urls(
    client: AsyncNanoGPT, mock_api: respx.MockRouter, png: bytes, png_b64: str
) -> None:
    route = mock_api.post(EDITS).respond(200, json=ok_body(png_b64))

    await client.images.edit(prompt="combine", images=[png, f"data:image/png;base64,{png_b64}"])

    body = json.loads(route.calls.last.request.content)
    assert body["imageDataUrls"] == [f"data:image/png;base64,{png_b64}"] * 2
    assert "imageDataUrl" not in body


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({}, InvalidInputError, "needs the image to edit"),
        ({"images": []}, InvalidInputError, "needs the image to edit"),
        ({"mask": "PNG"}, InvalidInputError, "needs the image to edit"),
        ({"image": b"not an image"}, ImageInputError, "is not a PNG"),
        ({"image": "PNG", "n": 0}, InvalidInputError, "n must be at least 1"),
        ({"image": "PNG", "extra_body": {"seed": 2**64}}, InvalidInputError, "64 bits"),
        ({"image": "https://x.example/a.png"}, ImageInputError, "does not fetch URLs"),
    ],
)
async def test_bad_edits_fail_before_anything_is_sent(
    client: AsyncNanoGPT,
    mock_api: respx.MockRouter,
    png: bytes,
    *,
    kwargs: dict[str, Any],
    error: type[Exception],
    fragment: str,
) -> None:
    route = mock_api.post(EDITS)
    kwargs = {k: png if v == "PNG" else v for k, v in kwargs.items()}

    with pytest.raises(error, match=fragment):
        await client.images.edit(prompt="x", **kwargs)
    assert not route.called


async def test_edit_over_4_mb_as_a_data_url_is_refused(
    client: AsyncNanoGPT, mock_api: respx.MockRouter, png: bytes
) -> None:
    route = mock_api.post(EDITS)
    big = png + b"\0" * int(3.2 * 1024 * 1024)

    with pytest.raises(ImageInputError, match="after encoding"):
        await client.images.edit(prompt="x", image=big)
    assert not route.called


async def test_edit_400_becomes_bad_request_error_with_the_servers_message(
    client: AsyncNanoGPT, mock_api: respx.MockRouter, png: bytes
) -> None:
    mock_api.post(EDITS).respond(
        400,
        json={
            "error": {
                "message": "model needs a mask",
                "type": "invalid_request_error",
                "code": "invalid_value",
                "param": "maskDataUrl",
            }
        },
    )

    with pytest.raises(BadRequestError, match="model needs a mask"):
        await client.images.edit(prompt="x", image=png)


# -- end to end on the fake ---------------------------------------------------------------------


@pytest.fixture
def server() -> Any:
    with FakeNanoGPT(api_key=KEY).run_in_thread() as running:
        yield running


def fake_client(server: FakeServer) -> AsyncNanoGPT:
    return AsyncNanoGPT(api_key=KEY, base_url=server.base_url)


async def test_edit_end_to_end_on_the_fake_is_charged_once(server: FakeServer, png: bytes) -> None:
    async with fake_client(server) as client:
        response = await client.images.edit(
            prompt="make it snow", image=png, model="flux-kontext", response_format="url"
        )
        data = await response.data[0].read()

    assert data.startswith(b"\x89PNG")
    stats = server.fake.stats
    assert (stats.edit_requests, stats.generations, stats.images_generated) == (1, 1, 1)
    assert response.cost == pytest.approx(stats.charged_usd)


async def test_edit_refused_by_the_model_rules_is_not_charged(
    server: FakeServer, png: bytes
) -> None:
    async with fake_client(server) as client:
        with pytest.raises(BadRequestError, match="needs both an input image and a mask"):
            await client.images.edit(prompt="x", image=png, model="flux-lora/inpainting")

    assert server.fake.stats.charged_usd == 0


async def test_edit_cut_off_after_the_charge_is_not_retried(server: FakeServer, png: bytes) -> None:
    # Money policy: a paid POST that may have reached the server is not sent twice.
    server.fake.enqueue(Fault.reset_after_charge(), route="edits")

    async with fake_client(server) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.images.edit(prompt="x", image=png, model="flux-kontext")

    assert info.value.request_sent is True
    stats = server.fake.stats
    assert (stats.edit_requests, stats.generations) == (1, 1)


async def test_edit_refused_before_processing_is_retried_and_charged_once(
    server: FakeServer, png: bytes
) -> None:
    server.fake.enqueue(Fault.status(503), count=2, route="edits")

    async with fake_client(server) as client:
        response = await client.images.edit(prompt="x", image=png, model="flux-kontext")

    stats = server.fake.stats
    assert (stats.edit_requests, stats.generations) == (3, 1)
    assert response.cost == pytest.approx(stats.charged_usd)


# -- batch ----------------------------------------------------------------------------------------


async def test_a_batch_mixes_generations_and_edits_and_resumes(
    server: FakeServer, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_png("photo"))
    items: list[Any] = [
        "a red fox",
        {"prompt": "make it snow", "operation": "edit", "image": str(photo)},
        BatchItem("add a hat", params={"operation": "edit", "image": photo, "n": 1}),
        # The same fields as a generation (image-to-image): a different item, a different route.
        {"prompt": "make it snow", "image": str(photo)},
    ]
    out = tmp_path / "out"

    async with fake_client(server) as client:
        batch = client.images.generate_many(items, output_dir=out, rps=None, model="flux-kontext")
        async with batch:
            results: list[ItemResult] = [result async for result in batch]
        again = await client.images.generate_many(
            items, output_dir=out, rps=None, model="flux-kontext"
        ).run()

    assert sorted(r.status for r in results) == ["ok"] * 4
    by_index = {r.index: r for r in results}
    assert by_index[1].request["operation"] == "edit"
    assert "operation" not in by_index[3].request
    assert by_index[1].id != by_index[3].id
    stats = server.fake.stats
    assert (stats.generation_requests, stats.edit_requests, stats.images_generated) == (4, 2, 4)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["params"].get("operation", "generate") for line in manifest) == [
        "edit",
        "edit",
        "generate",
        "generate",
    ]
    assert sum(line["cost"] for line in manifest) == pytest.approx(stats.charged_usd)
    assert (again.skipped, again.ok) == (4, 0)
    assert stats.generation_requests == 4  # the resume sent nothing


async def test_batch_edits_cut_off_after_the_charge_are_recorded_failed_not_paid_twice(
    server: FakeServer, tmp_path: Path, png: bytes
) -> None:
    server.fake.enqueue(Fault.reset_after_charge(), count=2, route="edits")
    server.fake.enqueue(Fault.status(503), count=2, route="edits")
    items = [
        {"id": f"e{i}", "prompt": f"edit {i}", "operation": "edit", "image": png} for i in range(6)
    ]

    async with fake_client(server) as client:
        summary = await client.images.generate_many(
            items, output_dir=tmp_path, rps=None, concurrency=1, model="flux-kontext"
        ).run()

    stats = server.fake.stats
    # 6 charged once each (the two cut off included); the 503s were retried, never charged.
    assert stats.generations_by_prompt == {f"edit {i}": 1 for i in range(6)}
    assert stats.edit_requests == 8
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert (summary.ok, summary.failed) == (4, 2)
    failed = [line for line in lines if line["status"] == "failed"]
    assert [line["error"]["type"] for line in failed] == ["APIConnectionError"] * 2
    assert all(line["attempts"] == 1 for line in failed)
    recorded = sum(line["cost"] or 0 for line in lines)
    # What the manifest could see is what was answered; the two lost answers are the gap, and
    # they are recorded as failed (re-running would pay again: the user decides).
    assert recorded == pytest.approx(stats.charged_usd - 2 * server.fake.price_per_image)
    assert sum(len(line["files"]) for line in lines) == 4


async def test_a_batch_edit_row_without_an_image_or_with_generation_fields_fails_alone(
    server: FakeServer, png: bytes
) -> None:
    items: list[dict[str, Any]] = [
        {"prompt": "no image", "operation": "edit"},
        {"prompt": "seeded", "operation": "edit", "image": png, "seed": 7},
        {"prompt": "typo", "operation": "editt", "image": png},
        {"prompt": "fine", "operation": "edit", "image": png},
    ]
    async with fake_client(server) as client:
        batch = client.images.generate_many(items, rps=None, model="flux-kontext")
        async with batch:
            results = {r.index: r async for r in batch}

    assert results[3].status == "ok"
    assert "needs the image to edit" in str(results[0].error)
    assert "['seed'] are not fields of an image edit" in str(results[1].error)
    assert "operation must be one of ['generate', 'edit']" in str(results[2].error)
    assert server.fake.stats.generation_requests == 1


def test_prompt_files_carry_edit_rows_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"prompt": "a fox"}\n'
        '{"prompt": "snow", "operation": "edit", "image": "photo.png", "mask": "m.png"}\n'
    )
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("prompt,operation,image\na fox,,\nsnow,edit,photo.png\n")

    assert [r.get("operation") for r in read_prompts(jsonl)] == [None, "edit"]
    assert [r.get("operation") for r in read_prompts(csv_file)] == [None, "edit"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "snow", "operation": "edit", "image": "p.png", "strength": 0.5}\n')
    with pytest.raises(PromptFileError, match=r"line 1: \['strength'\] are not fields"):
        list(read_prompts(bad))


# -- CLI ----------------------------------------------------------------------------------------


def run_cli(server: FakeServer, *args: str) -> Any:
    env = {"NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert KEY not in result.output
    return result


def test_cli_edit_saves_the_edited_images_and_prints_paths_and_cost(
    server: FakeServer, tmp_path: Path
) -> None:
    photo = tmp_path / "room.png"
    photo.write_bytes(make_png("room"))
    mask = tmp_path / "mask.png"
    mask.write_bytes(make_png("mask"))
    out = tmp_path / "out"

    result = run_cli(
        server,
        "edit",
        str(photo),
        "a red sofa",
        "--mask",
        str(mask),
        "-m",
        "flux-lora/inpainting",
        "-s",
        "768x1024",
        "-o",
        str(out),
    )

    assert result.exit_code == 0, result.stderr
    (path,) = [Path(line) for line in result.stdout.splitlines()]
    assert path == out / "a-red-sofa.png"
    assert path.read_bytes().startswith(b"\x89PNG")
    assert "cost $0.0050" in result.stderr
    assert (server.fake.stats.edit_requests, server.fake.stats.images_generated) == (1, 1)


def test_cli_edit_with_several_images_and_n(server: FakeServer, tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(make_png("a"))
    second.write_bytes(make_png("b"))

    result = run_cli(
        server, "edit", str(first), "merge", "--image", str(second), "-m", "gpt-image-1",
        "-n", "2", "-o", str(tmp_path / "out"), "--name", "merged",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert [Path(p).name for p in result.stdout.split()] == ["merged-0.png", "merged-1.png"]


def test_cli_edit_refused_by_the_model_exits_1_with_one_line_and_no_charge(
    server: FakeServer, tmp_path: Path
) -> None:
    photo = tmp_path / "room.png"
    photo.write_bytes(make_png("room"))

    result = run_cli(server, "edit", str(photo), "x", "-m", "flux-lora/inpainting")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: NanoGPT answered 400")
    assert "needs both an input image and a mask" in result.stderr
    assert server.fake.stats.charged_usd == 0


def test_cli_batch_runs_edit_rows_from_a_jsonl_file(server: FakeServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_png("photo"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "gen", "prompt": "a fox", "model": "hidream"}\n'
        + json.dumps({"id": "ed", "prompt": "snow", "operation": "edit", "image": str(photo)})
        + "\n"
    )
    out = tmp_path / "out"

    result = run_cli(server, "batch", str(prompts), "-o", str(out), "-m", "flux-kontext")

    assert result.exit_code == 0, result.stderr
    lines = {
        line["id"]: line
        for line in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }
    assert lines["ed"]["params"]["operation"] == "edit"
    assert lines["ed"]["status"] == lines["gen"]["status"] == "ok"
    assert server.fake.stats.edit_requests == 1


def test_edit_help_shows_the_usage() -> None:
    result = CliRunner().invoke(cli, ["edit", "--help"])
    assert "Usage: cli edit [OPTIONS] IMAGE PROMPT" in result.output
    assert "--mask FILE" in result.output
    assert "edit" in CliRunner().invoke(cli, ["--help"]).output


def test_plain_http_clients_edit_on_the_v1_base_with_x_api_key(
    server: FakeServer, png_b64: str
) -> None:
    # What the OpenAI SDK or curl would do, without our client.
    url = f"{server.v1_base_url}/images/edits"
    body = {"prompt": "x", "model": "flux-kontext", "imageDataUrl": "data:image/png;base64,"}
    headers = {"x-api-key": KEY}

    empty = httpx.post(url, json=body, headers=headers)
    body["imageDataUrl"] += png_b64
    ok = httpx.post(url, json=body, headers=headers)

    assert (empty.status_code, ok.status_code) == (400, 200)
    assert empty.json()["error"]["message"] == "'imageDataUrl' holds no image data"
