"""Repository-wide pytest setup: how the suite is shared between pytest-xdist's workers.

The suite runs on every core (``-n auto`` in pyproject's addopts): most of its wall time is
subprocesses and servers starting, which overlap well. Tests go to whichever worker is free,
one at a time, except where tests share state that only exists in one process:

- a documentation page's examples run in order in one namespace (Sybil), so a page is one unit;
- the browser tests share one headless Chromium (a module fixture, ~2 s to start);
- and, for speed only, tests sharing a module fixture that is dear to build (`SHARED_FIXTURE`),
  or a module that is dear to import (`SHARED_IMPORT`).

Temporary files (``tmp_path``, and the temp files of the CLI processes the tests start) go to
memory where Linux offers it: see `temp_files_in_memory`.

xdist's own ``xdist_group`` marker would say this, but with pytest 9.2 and xdist 3.8 the group
is silently ignored (xdist renames ``item._nodeid``, which pytest 9.2 no longer reads).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from _pytest.assertion import rewrite
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

#: The modules pytest rewrites the asserts of (its own patterns): the suite's tests and conftests.
REWRITTEN = ("tests/test_*.py", "tests/conftest.py", "conftest.py")


def rewrite_test_modules_once(config: pytest.Config, root: Path) -> int:
    """Write the test modules' rewritten bytecode where pytest looks for it; how many written.

    Every xdist worker imports every test module, and pytest rewrites a module's asserts on
    import (parse, rewrite, compile: 1.7 s of CPU for the suite's 70 modules) unless it finds
    the rewritten code in ``__pycache__``, which it writes only where bytecode is written.
    Where ``PYTHONDONTWRITEBYTECODE`` is set (CI images, this machine) nothing was cached, so
    each of the four workers did the same 1.7 s at start-up, with every core busy: collection
    took 3.5-3.7 s of a worker's CPU, 1.8-2.2 s with the rewritten modules cached (measured).
    The controller does it once instead, while the workers start, with pytest's own functions:
    the same code a worker would make, in a pyc checked against its source's hash and written
    atomically, which each worker's import reads as usual (or rewrites itself if not yet there).

    Skips modules already cached and current. If pytest's private functions are gone in a
    later pytest, nothing changes but the speed (tests/test_suite_setup.py notices).
    """
    parts = [getattr(rewrite, name, None) for name in ("_read_pyc", "_rewrite_test", "_write_pyc")]
    read, rewrite_module, write = parts
    if read is None or rewrite_module is None or write is None:
        return 0
    state = config.stash[rewrite.assertstate_key]
    written = 0
    for source in sorted(path for pattern in REWRITTEN for path in root.glob(pattern)):
        cache = rewrite.get_cache_dir(source)
        pyc = cache / (source.name[:-3] + rewrite.PYC_TAIL)
        if read(source, pyc) is None and rewrite.try_makedirs(cache):
            source_hash, code = rewrite_module(source, config)
            written += bool(write(state, code, source_hash, pyc))
    return written


def pytest_configure(config: pytest.Config) -> None:
    """In xdist's controller, rewrite the test modules once while the workers start."""
    controller = config.pluginmanager.has_plugin("xdist") and not hasattr(config, "workerinput")
    workers = getattr(config.option, "numprocesses", None)
    if not controller or not workers or config.getoption("assertmode") != "rewrite":
        return
    root = Path(__file__).resolve().parent
    thread = threading.Thread(
        target=rewrite_test_modules_once, args=(config, root), name="rewrite-tests", daemon=True
    )
    thread.start()
    config.add_cleanup(thread.join)


#: Where Linux keeps a tmpfs for everyone (sticky and world-writable, like /tmp).
SHM = Path("/dev/shm")  # noqa: S108 - what /tmp is for the suite; see temp_files_in_memory
#: Below this much free memory there, temporary files stay where they were.
SHM_MIN_FREE = 1 << 30


def memory_tempdir(mounts: Path = Path("/proc/mounts"), shm: Path = SHM) -> Path | None:
    """``/dev/shm`` if it is a writable, sticky tmpfs with a GiB free, else ``None``."""
    try:
        table = mounts.read_text()
        info = shm.stat()
        free = os.statvfs(shm)
    except OSError:  # not Linux, or no /dev/shm
        return None
    rows = (line.split() for line in table.splitlines())
    tmpfs = any(row[1:3] == [str(shm), "tmpfs"] for row in rows)
    sticky = bool(info.st_mode & 0o1000)
    room = free.f_bavail * free.f_frsize >= SHM_MIN_FREE
    return shm if tmpfs and sticky and room and os.access(shm, os.W_OK | os.X_OK) else None


def temp_files_in_memory() -> None:
    """Point ``TMPDIR`` at a tmpfs for this run (pytest's ``tmp_path``, and child processes).

    The suite creates tens of thousands of small files (images, manifests, locks) and deletes
    them again. Where /tmp is a disk file system every creation waits on its journal: 2,000
    files took 2.2 s of wall time and 0.69 s of system CPU on this machine's ext4 /tmp, 0.18 s
    and 0.02 s on /dev/shm. Over the whole suite (A/B, same sitting): system CPU 16.6 s -> 8.4 s,
    and 13% less time waiting in tests. Nothing a test proves depends on the disk: fsync is
    still called everywhere (a no-op on tmpfs, as the test process's own already skips the
    flush), and the crash tests kill processes, which loses what a process had not written, on
    any file system, never what the kernel holds.

    A ``TMPDIR`` the user set is kept (so is ``--basetemp``); set ``TMPDIR=/tmp`` to run on
    disk. Workers and child processes inherit it from the environment.
    """
    if "TMPDIR" in os.environ:
        return
    memory = memory_tempdir()
    if memory is not None:
        os.environ["TMPDIR"] = str(memory)
        tempfile.tempdir = None  # gettempdir() looks again


temp_files_in_memory()


def _leave_long_lived_objects_out_of_gc() -> None:
    """Move every object alive now to the garbage collector's permanent generation.

    Each xdist worker holds ~190,000 objects after collection (pytest, hypothesis,
    schemathesis, the test modules) that live until it exits, and every full collection walked
    them all again: ~0.16 s each, 1.1-1.4 s of a worker's CPU over a run (measured with
    ``gc.callbacks``); after ``gc.freeze()`` the tests' own objects are walked, 0.31 s where
    0.69 s was (A/B on eleven test files). Objects made by tests are collected as before.

    Not before collection: ``gc.get_referrers`` does not see frozen objects, and Hypothesis,
    imported by test modules, asks it whether trio's PRNG is referenced (and warned it was not).
    """
    gc.freeze()


@pytest.hookimpl(wrapper=True)
def pytest_collection() -> Generator[None, object, object]:
    """Collect (import every test module) with the cycle collector paused.

    What collection builds lives as long as the worker (frozen at its end, below), so the
    ~350 collections it set off in each worker found nothing to free: 0.1 s of a worker's
    CPU (collect-only, three runs each way), at start-up, when every worker waits for the
    slowest to finish collecting. Turned back on when collection ends, however it ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return (yield)
    finally:
        if enabled:
            gc.enable()


def pytest_collection_finish() -> None:
    """The test modules and their parameters, now loaded, live as long as the process."""
    # Hypothesis's pytest plugin imports it during the run anyway (if no test module did); on
    # import it registers trio's PRNG and asks gc who refers to it: before the freeze, not after.
    with contextlib.suppress(ImportError):
        import hypothesis  # noqa: F401
    _leave_long_lived_objects_out_of_gc()


#: Node id prefixes whose tests must run on one worker, each prefix's tests together.
ONE_WORKER = ("docs/", "tests/test_gallery_browser.py")
#: Tests that share a module fixture (or, below, work) too dear to do on every worker: each
#: group's tests go to one worker (handed out one at a time, two workers both built it, measured).
SHARED_FIXTURE = {
    # griffe loads the whole package (0.5 s of CPU, 1.5 s at load 8).
    "griffe": ("tests/test_docs_reference.py::",),
    # 1,100 recorded items written and hashed (1.7-2.0 s at load 8 on ext4).
    "1,100 recorded items": (
        "tests/test_batch_resume.py::test_a_resume_checks_its_recorded_items_in_a_few_worker_thread",
    ),
    # schemathesis imported and the spec loaded: 0.35 s of CPU, and its four tests had drawn
    # three workers (setup 0.74-0.76 s each under load).
    "schemathesis": ("tests/test_conformance.py::test_generated_requests_never_crash_the_fake",),
    # The package's import graph (grimp).
    "import graph": (
        "tests/test_layout.py::test_the_graph_counts_lazy_and_type_checking_imports",
        "tests/test_layout.py::test_no_import_cycle_between_package_modules",
    ),
    # The 8,192 + 192 request bodies validated against the spec (0.46 s of CPU for the
    # schema): the trio run builds the same bodies and validates only those not validated.
    "validated bodies": (
        "tests/test_conformance.py::test_every_generation_body_the_client_builds_validates",
        "tests/test_conformance.py::test_every_edit_body_the_client_builds_validates",
    ),
}
#: Tests that import a module dear to import, which only they use: each group's tests go to one
#: worker, so one worker imports it, not each that happened to draw one of them.
SHARED_IMPORT = {
    # openai: 0.5 s of CPU (the SDK on the fake; the benchmark harness checks every contender
    # imports, the openai ones among them).
    "openai": (
        "tests/test_fake_rules.py::test_the_openai_sdk_edits_images_on_the_fake",
        "tests/test_benchmarks_smoke.py::",
    ),
}
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
def pytest_xdist_auto_num_workers() -> int | None:
    """``-n auto``: two workers more than the cores (at most twice as many).

    Many tests wait rather than compute: a rate limit's or a cooldown's real time, a child
    process (the CLI, shards, crashes, Redis workers). With one worker per core those waits
    left the cores idle: on this 2-core machine, 1,767 tests, quiet (25 Nov 2026): 60.2 s with
    2 workers, 48.8 s with 3, 47.2 s with 4. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides
    where set (xdist's own hook reads it).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return min(2 * cores, cores + 2)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """Load scheduling, one test at a time, with a page or module kept whole where needed."""
    if config.getvalue("dist") != "load":
        return None  # the user chose another --dist
    return scheduling_class()(config, log)


def scheduling_class() -> type:
    """The scope scheduling of xdist with our work units, mended where a crashed worker hangs it.

    pytest-timeout (thread method) ends a worker whose test hangs, and xdist starts another.
    xdist 3.8's scope scheduling then put every unit the dead worker had ever run back on the
    queue, finished ones included: each went out again as an empty order, which no worker
    ever reports done, so no more work was handed out and the run waited forever (a CI run
    here, 25 Nov 2026; pytest-xdist issues 1323, 1327 and 1378). Here only the unfinished
    tests go back; the one the worker died in is not run again (xdist has reported it
    failed); and a worker starting late gets two tests, as at start-up (a worker runs a test
    only once it holds the next one, or is told to stop).
    """
    from xdist.scheduler import LoadScopeScheduling  # imported only when xdist runs

    class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def remove_node(self, node: Any) -> str | None:
            workload: dict[str, dict[str, bool]] = self.assigned_work.pop(node)
            unfinished = {
                scope: tests for scope, tests in workload.items() if not all(tests.values())
            }
            if not unfinished:
                return None
            crashed = next(
                test for tests in unfinished.values() for test, done in tests.items() if not done
            )
            unfinished[work_unit(crashed)][crashed] = True
            self.workqueue.update(
                (scope, tests) for scope, tests in unfinished.items() if not all(tests.values())
            )
            for other in self.assigned_work:
                self._reschedule(other)
            return crashed

        def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
            # A unit done leaves the node's work: xdist kept every unit a node ever ran and
            # counted them all on each test's report (827,000 generator steps a run, 0.5 s of
            # the controller's CPU, quadratic in the tests per worker).
            nodeid = self.registered_collections[node][item_index]
            units = self.assigned_work[node]
            scope = self._split_scope(nodeid)
            units[scope][nodeid] = True
            if all(units[scope].values()):
                del units[scope]
            self._reschedule(node)

        def _reschedule(self, node: Any) -> None:
            super()._reschedule(node)
            if (
                not node.shutting_down
                and self.workqueue
                and self._pending_of(self.assigned_work[node]) < 2
            ):
                self._assign_work_unit(node)

    return Scheduling


def work_unit(nodeid: str) -> str:
    """What a test is handed out with: its file, its group of tests, or itself alone."""
    if nodeid.startswith(ONE_WORKER):
        return nodeid.split("::", 1)[0]  # the file
    for name, tests in SHARED_FIXTURE.items():
        if nodeid.startswith(tests):
            return f"fixture {name}"
    for name, tests in SHARED_IMPORT.items():
        if nodeid.startswith(tests):
            return f"import {name}"
    return nodeid
