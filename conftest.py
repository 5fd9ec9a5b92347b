"""Repository-wide pytest setup: how the suite is shared between pytest-xdist's workers.

The suite runs on every core (``-n auto`` in pyproject's addopts): most of its wall time is
subprocesses and servers starting, which overlap well. Tests go to whichever worker is free,
one at a time, except where tests share state that only exists in one process:

- a documentation page's examples run in order in one namespace (Sybil), so a page is one unit;
- the browser tests share one headless Chromium (a module fixture, ~2 s to start).

xdist's own ``xdist_group`` marker would say this, but with pytest 9.2 and xdist 3.8 the group
is silently ignored (xdist renames ``item._nodeid``, which pytest 9.2 no longer reads).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

#: Node id prefixes whose tests must run on one worker, each prefix's tests together.
ONE_WORKER = ("docs/", "tests/test_gallery_browser.py")
#: mutmut's runs of the unchanged code (``MUTANT_UNDER_TEST``): its stats run, then its clean run.
MUTMUT_UNCHANGED_RUNS = ("stats", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutmut, the 15 s per test (pyproject) is for mutants only; the clean runs get 120 s.

    mutmut's stats run traces every call of the mutated modules, several times slower: on a
    loaded machine a test went past 15 s there, and pytest-timeout (thread method) ends the
    process, so ``nox -s mutation`` stopped at its stats step with no report at all.
    """
    del config
    if os.environ.get("MUTANT_UNDER_TEST") in MUTMUT_UNCHANGED_RUNS:
        for item in items:
            item.add_marker(pytest.mark.timeout(120))


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """Load scheduling, one test at a time, with a page or module kept whole where needed."""
    if config.getvalue("dist") != "load":
        return None  # the user chose another --dist
    from xdist.scheduler import LoadScopeScheduling  # imported only when xdist runs

    class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(ONE_WORKER):
                return nodeid.split("::", 1)[0]  # the file
            return nodeid  # every other test on its own

    return Scheduling(config, log)
