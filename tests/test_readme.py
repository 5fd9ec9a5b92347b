"""The README works from the repository: its links resolve, its install commands can run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: `pip install nanogpt-async` or `pip install 'nanogpt-async[cli]'`: the PyPI form.
PYPI_INSTALL = re.compile(
    r"pip install ('nanogpt-async(\[[a-z,]+\])?'|nanogpt-async(\[[a-z,]+\])?)(?=[\s`]|$)",
    re.MULTILINE,
)


def _pyproject() -> str:
    # Read as text: tomllib is Python 3.11+, and these two facts need no TOML parser.
    return (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def _repository() -> str:
    found = re.search(r'^Repository = "([^"]+)"$', _pyproject(), re.MULTILINE)
    assert found is not None, "pyproject.toml has no Repository URL"
    return found.group(1)


def _extras() -> set[str]:
    section = _pyproject().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([a-z]+) = \[", section, re.MULTILINE))


def _slug(heading: str) -> str:
    """The anchor GitHub (and mkdocs' toc) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {_slug(h) for h in headings}


def _relative_links(page: Path) -> list[str]:
    links = LINK.findall(page.read_text(encoding="utf-8"))
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_every_relative_link_in_the_readme_points_at_a_file_in_the_repository():
    links = _relative_links(README)
    assert len(links) >= 10
    for link in links:
        path, _, anchor = link.partition("#")
        target = (README.parent / path).resolve() if path else README
        assert target.exists(), f"README links to {link!r}: no such file"
        assert target.is_relative_to(ROOT), f"README links outside the repository: {link!r}"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"README links to {link!r}: no such heading"


def test_install_commands_use_the_repository_url_until_a_release_exists():
    repository = _repository()
    readme = README.read_text(encoding="utf-8")

    assert f"pip install 'nanogpt-async @ git+{repository}'" in readme
    assert f"git clone {repository}" in readme
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not PYPI_INSTALL.search(text), f"{page.name}: `pip install` of an unpublished name"
        for url in re.findall(r"git\+(https://\S+?)'", text):
            assert url == repository, f"{page.name}: installs from {url}, not {repository}"


def test_every_extra_the_docs_name_exists():
    extras = _extras()
    assert {"speed", "cli", "gallery", "dev"} <= extras
    for page in PAGES:
        for group in re.findall(r"nanogpt-async\[([a-z,]+)\]", page.read_text(encoding="utf-8")):
            assert set(group.split(",")) <= extras, f"{page.name}: unknown extra in [{group}]"


@pytest.mark.parametrize("extra", ["dev]' && .venv/bin/python -m pytest -q"])
def test_ci_runs_the_readme_test_command_verbatim(extra):
    command = next(
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("python3 -m venv") and extra in line
    )
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
