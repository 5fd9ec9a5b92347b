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
import sys
from typing import Any

import pytest
from _pytest.assertion.rewrite import AssertionRewritingHook


def _rewrite_only_the_suites_own_asserts() -> None:
    """Leave installed packages' modules as Python compiled them: only our tests get rewritten.

    pytest rewrites the ``assert`` statements of every module of every installed distribution
    that has a pytest plugin: all of schemathesis (203 modules), nanogpt_async (81),
    hypothesis (75), platformdirs. Where bytecode is not written (``PYTHONDONTWRITEBYTECODE``,
    as on this machine) nothing is cached, so every xdist worker parsed and compiled all of them
    from source at start-up: 2.3 s of CPU of the 3.5 s a collection took (``--assert=plain``
    measured against ``rewrite``). Their asserts are theirs, not the suite's; test modules
    (``test_*.py``) and conftests are still rewritten, they match pytest's own patterns.

    This file is imported after the plugins' own modules (already rewritten, a few dozen) and
    before any test module. pytest has no public way to unmark a name: if the private set is
    gone in a later pytest, nothing changes but the speed (tests/test_suite_setup.py notices).
    """
    for finder in sys.meta_path:
        marked = getattr(finder, "_must_rewrite", None)
        cache = getattr(finder, "_marked_for_rewrite_cache", None)
        if isinstance(finder, AssertionRewritingHook) and isinstance(marked, set):
            marked.clear()
            if isinstance(cache, dict):
                cache.clear()


_rewrite_only_the_suites_own_asserts()

#: Node id prefixes whose tests must run on one worker, each prefix's tests together.
ONE_WORKER = ("docs/", "tests/test_gallery_browser.py")
#: mutmut's runs of the unchanged code (``MUTANT_UNDER_TEST``): its stats run, then its clean run.
MUTMUT_UNCHANGED_RUNS = ("stats", "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first; under mutmut, a longer timeout for the runs of the unchanged code.

    xdist hands tests out in collection order, and the longest (shard processes killed and
    restarted, 7-13 s each) sat near the end: with 3 workers one finished 20 s before the others
    (measured). The sort is stable, and a page or module that runs on one worker keeps its order.

    Under mutmut, the 15 s per test (pyproject) is for mutants only; the clean runs get 120 s.
    mutmut's stats run traces every call of the mutated modules, several times slower: on a
    loaded machine a test went past 15 s there, and pytest-timeout (thread method) ends the
    process, so ``nox -s mutation`` stopped at its stats step with no report at all.
    """
    items.sort(
        key=lambda item: item.nodeid.startswith(ONE_WORKER) or not item.get_closest_marker("slow")
    )
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
