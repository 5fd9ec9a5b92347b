"""Run the documentation's Python examples as tests (Sybil), so they cannot rot.

Each page runs in a fresh temporary folder with ``NANOGPT_API_KEY`` and ``NANOGPT_BASE_URL``
pointing at a fake NanoGPT server on loopback: the examples read exactly as they would against
the real API, yet run offline and free. Retry waits are instant. A block that cannot run
offline is preceded by ``<!-- skip: next -->``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from nanogpt_async.testing import FakeNanoGPT, instant_retries

#: The key the examples' fake server accepts (never a real one).
DOCS_KEY = "docs-example-key"


@pytest.fixture(scope="module")
def docs_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Per page: a fake server, the environment pointing at it, a temp working folder."""
    folder: Path = tmp_path_factory.mktemp("docs")
    with (
        FakeNanoGPT(api_key=DOCS_KEY).run_in_thread() as server,
        pytest.MonkeyPatch.context() as patch,
        instant_retries(),
    ):
        patch.setenv("NANOGPT_API_KEY", DOCS_KEY)
        patch.setenv("NANOGPT_BASE_URL", server.base_url)
        patch.chdir(folder)
        yield


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["*.md", "guides/*.md"],
    # Pages written by the benchmark and reliability work show results, not runnable code.
    excludes=["benchmarks.md", "reliability.md"],
    fixtures=["docs_environment"],
).pytest()
