"""The gallery in a real browser: Debian's headless Chromium opens it from disk (file://).

Driven through Selenium and Debian's own chromedriver (same source package as the browser, so
their versions always match; nothing is downloaded at run time). Skips, saying what to install,
where Chromium is missing; `.ci/run` installs it so CI always runs these. Screenshots go to
``artifacts/`` at the repository root (git-ignored) for CI to keep.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nanogpt_async._cli import _commands
from nanogpt_async.testing import FakeNanoGPT

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'"
)
from selenium.webdriver.chrome.options import Options  # noqa: E402 - after the importorskip
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium not found: install Debian's browser and its driver "
        "(apt-get install chromium chromium-driver, as .ci/run does), or point the CHROMIUM "
        "and CHROMEDRIVER variables at them",
    ),
]

HOSTILE = (
    "<script>window.__pwned = 1</script>",
    '"><img src=x onerror="window.__pwned = 2">',
)
REFUSED = "a fox the server refuses: no such model"
PROMPTS: list[dict[str, Any]] = [
    {"prompt": "a red fox in snow", "seed": 7},
    {"prompt": "a lighthouse at dusk", "n": 2, "size": "1360x768"},
    {"prompt": "a blue fox at night", "model": "gpt-image-1"},
    *({"prompt": text} for text in HOSTILE),
    *({"prompt": f"a field of tulips, style {i}"} for i in range(5)),
    {"prompt": REFUSED, "model": "no-such-model"},
]
OK = len(PROMPTS) - 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real batch through the CLI, which writes the gallery; one item fails (404)."""
    base = tmp_path_factory.mktemp("gallery")
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    out = base / "out"
    with FakeNanoGPT(api_key="k-browser").run_in_thread() as server:
        result = CliRunner().invoke(
            _commands.cli,
            ["batch", str(prompts), "-o", str(out), "--progress", "plain"],
            env={"NANOGPT_API_KEY": server.api_key, "NANOGPT_BASE_URL": server.base_url},
        )
    assert result.exit_code == 1, result.output  # the one refused item
    assert "gallery: " in result.stderr
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # Chromium leaves an empty org.chromium.Chromium.* folder in its temp dir on every run:
    # give it one of the suite's own, removed with the rest of the suite's temporary files.
    scratch = tmp_path_factory.mktemp("chromium")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options,
        service=Service(executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": str(scratch)}),
    )
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, folder: Path) -> Any:
    browser.get((folder / "index.html").as_uri())
    browser.get_log("browser")  # start each test with an empty console
    return browser


def _screenshot(browser: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / name))


def _visible_prompts(browser: Any) -> list[str]:
    return list(
        browser.execute_script(
            "return Array.from(document.querySelectorAll('.card'))"
            ".filter((c) => getComputedStyle(c).display !== 'none')"
            ".map((c) => c.querySelector('.prompt').textContent);"
        )
    )


def _type_filter(browser: Any, text: str) -> None:
    box = browser.find_element(By.ID, "filter")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)
    # The filter runs on the next animation frame: wait for its count line to say so.
    expected = browser.execute_script(
        "return Array.from(document.querySelectorAll('.card'))"
        ".filter((c) => c.textContent.toLowerCase().includes(arguments[0])).length;",
        text.lower(),
    )
    shown = browser.find_element(By.ID, "shown")
    WebDriverWait(browser, 10).until(lambda _: shown.text == f"{expected} of {len(PROMPTS)} shown")


def test_every_thumbnail_loads_from_disk(page: Any, folder: Path) -> None:
    # Lazy images load near the viewport: bring each one there and wait for it to decode.
    sizes = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        (async () => {
          const images = Array.from(document.querySelectorAll(".card img"));
          for (const image of images) {
            image.scrollIntoView();
            await image.decode().catch(() => {});
          }
          window.scrollTo(0, 0);
          done(images.map((image) => [image.getAttribute("src"), image.naturalWidth]));
        })();
        """
    )
    _screenshot(page, "gallery.png")

    images = sum(int(p.get("n", 1)) for p in PROMPTS[:OK])
    assert len(sizes) == images
    assert [src for src, width in sizes if width <= 0] == []
    assert all(src.startswith(".thumbs/") for src, _ in sizes)
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # no image refused, no CSP violation, no script error
    totals = page.find_element(By.ID, "totals").text
    assert f"{len(PROMPTS)} items" in totals
    assert f"{OK} ok" in totals
    assert "1 failed" in totals


def test_the_filter_hides_and_shows_cards(page: Any) -> None:
    _type_filter(page, "fox")
    assert _visible_prompts(page) == ["a red fox in snow", "a blue fox at night", REFUSED]
    _screenshot(page, "gallery-filtered.png")

    _type_filter(page, "gpt-image")  # the model is searchable too (not in any prompt)
    assert _visible_prompts(page) == ["a blue fox at night"]

    _type_filter(page, "")
    assert len(_visible_prompts(page)) == len(PROMPTS)


def test_failed_items_show_their_error_and_can_be_listed_alone(page: Any) -> None:
    Select(page.find_element(By.ID, "status")).select_by_value("failed")

    assert _visible_prompts(page) == [REFUSED]
    card = page.find_element(By.CSS_SELECTOR, ".card.failed")
    assert "NotFoundError 404" in card.text
    assert "does not exist" in card.text


def test_sorting_by_cost_puts_the_dearest_first(page: Any) -> None:
    Select(page.find_element(By.ID, "sort")).select_by_value("cost-desc")

    first = page.find_element(By.CSS_SELECTOR, ".card")
    costs = page.execute_script(
        "return Array.from(document.querySelectorAll('.card')).map((c) => c.dataset.cost);"
    )
    assert first.find_element(By.CSS_SELECTOR, ".prompt").text == "a lighthouse at dusk"
    assert costs[-1] == ""  # the refused item has no cost: unknown values go last


def test_hostile_prompts_stay_text_in_the_browser(page: Any) -> None:
    assert page.execute_script("return window.__pwned;") is None
    shown = _visible_prompts(page)
    for text in HOSTILE:
        assert text in shown
    assert page.execute_script("return document.scripts.length;") == 1
