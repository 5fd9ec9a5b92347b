"""The gallery: cards from the manifest, thumbnails, escaping, path safety, CLI and batch glue."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

import nanogpt_async
from nanogpt_async._cli import _commands
from nanogpt_async._gallery import _thumbs, build_gallery, write_gallery

HOSTILE_PROMPTS = (
    "<script>window.__pwned = 1</script>",
    '"><img src=x onerror="window.__pwned = 2">',
    "' onmouseover='window.__pwned = 3",
    "</p></article></main><script>window.__pwned = 4</script>",
)


def png_bytes(width: int = 64, height: int = 48, color: str = "teal", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def record(
    index: int,
    prompt: str,
    *,
    files: list[str] | None = None,
    folder: Path | None = None,
    status: str = "ok",
    cost: float | None = 0.005,
    error: dict[str, Any] | None = None,
    item_id: str | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entries = []
    for name in files or []:
        path = (folder or Path()) / name
        data = path.read_bytes() if folder and path.is_file() else b""
        entries.append(
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        )
    return {
        "id": item_id or f"item-{index}",
        "index": index,
        "prompt": prompt,
        "params": params if params is not None else {"model": "hidream", "size": "1024x1024"},
        "status": status,
        "files": entries,
        "cost": cost,
        "attempts": 1,
        "error": error,
        "request_id": f"req_{index}",
        "started_at": 1_795_000_000.0 + index,
        "finished_at": 1_795_000_001.5 + index,
    }


def write_manifest(folder: Path, records: list[dict[str, Any]], tail: str = "") -> None:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "manifest.jsonl").write_text(lines + tail, encoding="utf-8")


def image(folder: Path, name: str, **kwargs: Any) -> str:
    (folder / name).write_bytes(png_bytes(**kwargs))
    return name


class Page(HTMLParser):
    """The parts of the page the tests look at: elements, attributes, each card's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cards: list[dict[str, Any]] = []
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "article":
            self.cards.append({"attrs": attributes, "text": "", "links": [], "images": []})
        if self.cards and tag == "a":
            self.cards[-1]["links"].append(attributes["href"])
        if self.cards and tag == "img":
            self.cards[-1]["images"].append(attributes["src"])

    def handle_data(self, data: str) -> None:
        if self.cards:
            self.cards[-1]["text"] += data + " "


def page_of(folder: Path) -> Page:
    return Page((folder / "index.html").read_text(encoding="utf-8"))


async def test_each_item_gets_a_card_with_prompt_model_size_seed_cost_and_status(tmp_path):
    ok = image(tmp_path, "000000-a-fox-0.png")
    write_manifest(
        tmp_path,
        [
            record(
                0,
                "a red fox in snow",
                files=[ok],
                folder=tmp_path,
                params={"model": "flux-dev", "size": "1376x768", "seed": 42},
            ),
            record(
                1,
                "a forbidden thing",
                status="failed",
                cost=None,
                error={
                    "type": "ContentPolicyViolationError",
                    "status": 400,
                    "code": "content_policy_violation",
                    "message": "the prompt was refused by the content policy",
                    "request_id": "req_1",
                },
            ),
        ],
    )

    page = await write_gallery(tmp_path)

    assert page == tmp_path / "index.html"
    cards = page_of(tmp_path).cards
    assert [c["attrs"]["data-status"] for c in cards] == ["ok", "failed"]
    fox, refused = (c["text"] for c in cards)
    for needle in ("a red fox in snow", "flux-dev", "1376x768", "42", "$0.0050", "item-0"):
        assert needle in fox
    assert "ContentPolicyViolationError 400: the prompt was refused" in refused
    assert "failed: no image" in refused
    assert cards[0]["links"] == [ok]
    assert len(cards[0]["images"]) == 1
    assert cards[0]["images"][0].startswith(".thumbs/")
    assert (tmp_path / cards[0]["images"][0]).is_file()


async def test_totals_count_the_latest_line_per_item_and_every_recorded_charge(tmp_path):
    retried = image(tmp_path, "000000-retried-0.png")
    write_manifest(
        tmp_path,
        [
            # Paid, but the download failed: a later run retried it and paid again.
            record(0, "retried", status="failed", cost=0.01, error={"message": "expired"}),
            record(1, "failed twice", status="failed", cost=None, error={"message": "500"}),
            record(0, "retried", files=[retried], folder=tmp_path, cost=0.02),
            record(1, "failed twice", status="failed", cost=None, error={"message": "503"}),
        ],
        # A line torn by a crash, and garbage: each costs only itself.
        tail='{"id": "item-2", "index": 2, "prompt": "torn", "sta\nnot json\n',
    )

    report = await build_gallery(tmp_path)

    totals = report.totals
    assert (totals.items, totals.ok, totals.failed) == (2, 1, 1)
    assert totals.cost == pytest.approx(0.03)
    assert totals.superseded_cost == pytest.approx(0.01)
    page = page_of(tmp_path)
    assert [c["attrs"]["data-status"] for c in page.cards] == ["ok", "failed"]
    assert "503" in page.cards[1]["text"]
    assert "500" not in page.cards[1]["text"]
    header = (tmp_path / "index.html").read_text().split("<main", 1)[0]
    assert "$0.0300" in header
    assert "$0.0100" in header  # the earlier attempt's charge is shown, not hidden


async def test_prompts_ids_and_errors_stay_text_never_markup(tmp_path):
    records = [
        record(
            i,
            prompt,
            files=[image(tmp_path, f"00000{i}-x-0.png")],
            folder=tmp_path,
            item_id=prompt,
            params={"model": prompt, "size": "<b>big</b>", "seed": 1},
        )
        for i, prompt in enumerate(HOSTILE_PROMPTS)
    ]
    records.append(
        record(9, "err", status="failed", error={"type": "<i>x</i>", "message": "<script>1"})
    )
    write_manifest(tmp_path, records)

    await write_gallery(tmp_path)

    page = page_of(tmp_path)
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert len(scripts) == 1  # the page's own
    assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")]
    assert {tag for tag, _ in page.tags} <= {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "p", "span", "b",
        "div", "input", "select", "option", "main", "article", "a", "img", "dl", "dt", "dd",
        "script",
    }  # fmt: skip
    assert [tag for tag, _ in page.tags].count("img") == len(HOSTILE_PROMPTS)
    assert len(page.cards) == len(records)
    for card, prompt in zip(page.cards, HOSTILE_PROMPTS, strict=False):
        assert prompt in card["text"]
        assert "<b>big</b>" in card["text"]
    assert "<i>x</i>: <script>1" in page.cards[-1]["text"]


async def test_file_names_from_the_manifest_never_leave_the_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(color="red"))
    (folder / "link.png").symlink_to(outside)
    inside = image(folder, "000003-fine-0.png")
    write_manifest(
        folder,
        [
            record(0, "dots", files=["../secret.png"]),
            record(1, "absolute", files=[str(outside)]),
            record(2, "symlink out", files=["link.png"]),
            record(3, "fine", files=[inside, "javascript:alert(1)"], folder=folder),
        ],
    )

    report = await build_gallery(folder)

    assert report.thumbnails_made == 1  # nothing outside was ever opened
    cards = page_of(folder).cards
    for card in cards[:3]:
        assert card["links"] == []
        assert card["images"] == []
        assert "outside the folder" in card["text"]
    assert cards[3]["links"] == [inside]  # the missing "javascript:" file gets no link
    assert "file missing" in cards[3]["text"]
    text = (folder / "index.html").read_text()
    assert "secret.png" not in text.replace("../secret.png", "").replace(str(outside), "")
    assert 'href="javascript' not in text


async def test_a_rerun_makes_only_missing_thumbnails(tmp_path):
    names = [image(tmp_path, f"00000{i}-p-0.png", color=(i * 40, 0, 0)) for i in range(3)]
    write_manifest(
        tmp_path, [record(i, f"p{i}", files=[n], folder=tmp_path) for i, n in enumerate(names)]
    )

    first = await build_gallery(tmp_path)
    thumbs = sorted((tmp_path / ".thumbs").iterdir())
    stamps = {t: t.stat().st_mtime_ns for t in thumbs}
    thumbs[0].unlink()
    second = await build_gallery(tmp_path)

    assert (first.thumbnails_made, first.thumbnails_reused) == (3, 0)
    assert (second.thumbnails_made, second.thumbnails_reused) == (1, 2)
    assert all(t.stat().st_mtime_ns == stamps[t] for t in thumbs[1:])
    assert thumbs[0].is_file()


async def test_a_regenerated_image_gets_a_new_thumbnail(tmp_path):
    name = image(tmp_path, "000000-p-0.png", color="red")
    write_manifest(tmp_path, [record(0, "p", files=[name], folder=tmp_path)])
    await write_gallery(tmp_path)
    (tmp_path / name).write_bytes(png_bytes(color="blue", width=50))
    write_manifest(tmp_path, [record(0, "p", files=[name], folder=tmp_path)])

    report = await build_gallery(tmp_path)

    assert report.thumbnails_made == 1
    src = page_of(tmp_path).cards[0]["images"][0]
    with Image.open(tmp_path / src) as thumb:
        red, _, blue = thumb.convert("RGB").getpixel((10, 10))
    assert blue > 200 > red


async def test_thumbnails_fit_the_size_and_put_transparency_on_white(tmp_path):
    name = image(
        tmp_path, "000000-big-0.png", width=2000, height=1000, color=(0, 0, 0, 0), mode="RGBA"
    )
    write_manifest(tmp_path, [record(0, "big", files=[name], folder=tmp_path)])

    await write_gallery(tmp_path, thumbnail_size=200)

    src = page_of(tmp_path).cards[0]["images"][0]
    with Image.open(tmp_path / src) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (200, 100)
        assert min(thumb.convert("RGB").getpixel((50, 50))) > 240


async def test_an_unreadable_image_gets_a_card_without_a_preview(tmp_path):
    (tmp_path / "000000-broken-0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = image(tmp_path, "000001-good-0.png")
    write_manifest(
        tmp_path,
        [
            record(0, "broken", files=["000000-broken-0.png"], folder=tmp_path),
            record(1, "good", files=[good], folder=tmp_path),
        ],
    )

    report = await build_gallery(tmp_path)

    assert (report.thumbnails_made, report.unreadable) == (1, 1)
    broken, fine = page_of(tmp_path).cards
    assert "no preview" in broken["text"]
    assert broken["links"] == ["000000-broken-0.png"]
    assert broken["images"] == []
    assert len(fine["images"]) == 1


async def test_thumbnails_are_made_a_few_at_a_time(tmp_path, monkeypatch):
    names = [image(tmp_path, f"{i:06d}-p-0.png") for i in range(12)]
    write_manifest(
        tmp_path, [record(i, "p", files=[n], folder=tmp_path) for i, n in enumerate(names)]
    )
    real = _thumbs._make_one
    running, peak = [0], [0]

    def counting(job, size):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            return real(job, size)
        finally:
            running[0] -= 1

    monkeypatch.setattr(_thumbs, "_make_one", counting)
    monkeypatch.setattr(_thumbs, "_WORKERS", 3)

    report = await build_gallery(tmp_path)

    assert report.thumbnails_made == 12
    assert 1 <= peak[0] <= 3


async def test_a_folder_without_a_manifest_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `nanogpt-async batch"):
        await write_gallery(tmp_path)


async def test_without_pillow_the_error_says_which_extra_to_install(tmp_path, monkeypatch):
    write_manifest(tmp_path, [])
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)

    with pytest.raises(ImportError, match=r"\[gallery\] or \[cli\] extra"):
        await write_gallery(tmp_path)


async def test_an_empty_manifest_makes_a_page_that_says_so(tmp_path):
    write_manifest(tmp_path, [])

    await write_gallery(tmp_path)

    assert "No items recorded" in (tmp_path / "index.html").read_text()


def test_write_gallery_is_exported_from_the_package():
    assert nanogpt_async.write_gallery is write_gallery
    assert "write_gallery" in nanogpt_async.__all__


def test_the_page_loads_nothing_from_a_network(tmp_path):
    write_manifest(tmp_path, [record(0, "p", files=[image(tmp_path, "000000-p-0.png")])])
    CliRunner().invoke(_commands.cli, ["gallery", str(tmp_path)], catch_exceptions=False)
    text = (tmp_path / "index.html").read_text()
    policy = next(
        attrs["content"]
        for tag, attrs in Page(text).tags
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"
    )

    assert "http://" not in text
    assert "https://" not in text
    assert policy is not None
    assert "default-src 'none'" in policy
    assert "img-src 'self' file: data:;" in policy  # no network source anywhere


# -- the command line -------------------------------------------------------------------------


def test_gallery_command_prints_the_page_path_and_what_it_made(tmp_path):
    write_manifest(tmp_path, [record(0, "p", files=[image(tmp_path, "000000-p-0.png")])])

    result = CliRunner().invoke(_commands.cli, ["gallery", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "index.html")
    assert "1 items, 1 ok, 0 failed; 1 new thumbnail(s)" in result.stderr


def test_gallery_command_on_a_folder_without_a_manifest_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(_commands.cli, ["gallery", str(tmp_path)])

    assert result.exit_code == 2
    assert "no manifest.jsonl" in result.stderr
    assert "-o of `nanogpt-async batch`" in result.stderr


def test_gallery_command_without_pillow_is_a_usage_error_naming_the_extra(tmp_path, monkeypatch):
    write_manifest(tmp_path, [record(0, "p", files=[image(tmp_path, "000000-p-0.png")])])
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)

    result = CliRunner().invoke(_commands.cli, ["gallery", str(tmp_path)])

    assert result.exit_code == 2
    assert "the gallery needs Pillow" in result.stderr
    assert "[gallery] or [cli] extra" in result.stderr
    assert not (tmp_path / "index.html").exists()


def _batch(fake: Any, tmp_path: Path, *extra: str) -> Result:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n<script>alert(1)</script>\na blue fox\n")
    return CliRunner().invoke(
        _commands.cli,
        ["batch", str(prompts), "-o", str(tmp_path / "out"), "--progress", "plain", *extra],
        env={"NANOGPT_API_KEY": fake.api_key, "NANOGPT_BASE_URL": fake.base_url},
    )


def test_batch_writes_the_gallery_at_the_end(fake_nanogpt, tmp_path):
    result = _batch(fake_nanogpt, tmp_path)

    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert f"gallery: {out / 'index.html'} (3 items, 3 ok, 0 failed" in result.stderr
    cards = page_of(out).cards
    assert len(cards) == 3
    assert "<script>alert(1)</script>" in cards[1]["text"]
    charged = fake_nanogpt.fake.stats.charged_usd
    assert f"${charged:.4f}" in (out / "index.html").read_text().split("<main", 1)[0]


def test_batch_with_no_gallery_writes_none(fake_nanogpt, tmp_path):
    result = _batch(fake_nanogpt, tmp_path, "--no-gallery")

    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out" / "index.html").exists()
    assert not (tmp_path / "out" / ".thumbs").exists()
    assert "gallery" not in result.stderr


def test_batch_with_progress_none_writes_the_gallery_without_a_word(fake_nanogpt, tmp_path):
    result = _batch(fake_nanogpt, tmp_path, "--progress", "none")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert len(page_of(tmp_path / "out").cards) == 3


def test_batch_without_pillow_still_succeeds_and_says_how_to_get_a_gallery(
    fake_nanogpt, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)

    result = _batch(fake_nanogpt, tmp_path)

    assert result.exit_code == 0, result.output
    assert "no gallery written" in result.stderr
    assert "[gallery] or [cli] extra, or pip install 'pillow>=10'" in result.stderr
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 3
