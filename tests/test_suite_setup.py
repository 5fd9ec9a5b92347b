"""How the suite itself runs: what pytest rewrites, how xdist shares the tests out (conftest.py)."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

import hypothesis
import pytest
from _pytest.assertion.rewrite import AssertionRewritingHook

import nanogpt_async._client


def test_only_the_suites_own_modules_have_their_asserts_rewritten(
    request: pytest.FixtureRequest,
) -> None:
    # Rewriting every module of every package with a pytest plugin cost each worker 2.3 s of
    # CPU at start-up where bytecode is not cached (conftest.py says why it is turned off).
    if request.config.getoption("assertmode") != "rewrite":
        pytest.skip("assertion rewriting is off (--assert=plain)")
    rewritten = [
        module.__name__
        for module in (nanogpt_async._client, hypothesis, sys.modules[__name__])
        if isinstance(getattr(module, "__loader__", None), AssertionRewritingHook)
    ]
    assert rewritten == [__name__]


@pytest.fixture
def root_conftest(request: pytest.FixtureRequest) -> ModuleType:
    """The repository's conftest.py as pytest loaded it (its module name is not unique)."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    for plugin in request.config.pluginmanager.get_plugins():
        if isinstance(plugin, ModuleType) and Path(plugin.__file__ or "") == path:
            return plugin
    raise LookupError(f"pytest has not loaded {path}")


def test_tests_marked_slow_are_handed_out_first_and_one_worker_groups_keep_their_order(
    root_conftest: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long test handed out last leaves the other workers idle while it runs.
    # Outside mutmut's own runs (which also give every test a longer timeout: not this test's).
    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)

    @dataclasses.dataclass
    class Item:
        nodeid: str
        slow: bool = False

        def get_closest_marker(self, name: str) -> object:
            return pytest.mark.slow if name == "slow" and self.slow else None

    items = [
        Item("tests/test_a.py::test_quick"),
        Item("docs/page.md::line:3"),
        Item("tests/test_a.py::test_long", slow=True),
        Item("tests/test_gallery_browser.py::test_long", slow=True),
        Item("tests/test_b.py::test_quick"),
        Item("tests/test_b.py::test_long", slow=True),
    ]

    root_conftest.pytest_collection_modifyitems(items)

    assert [item.nodeid for item in items] == [
        "tests/test_a.py::test_long",
        "tests/test_b.py::test_long",
        "tests/test_a.py::test_quick",
        "docs/page.md::line:3",
        "tests/test_gallery_browser.py::test_long",
        "tests/test_b.py::test_quick",
    ]


def _mounts(tmp_path: Path, where: Path, kind: str) -> Path:
    table = tmp_path / "mounts"
    table.write_text(f"/dev/vda / ext4 rw 0 0\n{kind} {where} {kind} rw,relatime 0 0\n")
    return table


def test_temp_files_go_to_a_writable_sticky_tmpfs_and_nowhere_else(
    root_conftest: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Creating a file on this machine's ext4 /tmp costs ~1 ms of wall time, 0.1 ms on tmpfs.
    monkeypatch.setattr(root_conftest, "SHM_MIN_FREE", 0)
    shm = tmp_path / "shm"
    shm.mkdir()
    shm.chmod(0o1777)
    find = root_conftest.memory_tempdir

    assert find(_mounts(tmp_path, shm, "tmpfs"), shm) == shm
    assert find(_mounts(tmp_path, shm, "ext4"), shm) is None  # a disk: no gain
    assert find(_mounts(tmp_path, tmp_path / "elsewhere", "tmpfs"), shm) is None
    assert find(tmp_path / "no-such-mounts-table", shm) is None  # not Linux
    shm.chmod(0o777)  # not sticky: anyone could delete anyone's files
    assert find(_mounts(tmp_path, shm, "tmpfs"), shm) is None
    shm.chmod(0o1777)
    monkeypatch.setattr(root_conftest, "SHM_MIN_FREE", 1 << 62)  # full
    assert find(_mounts(tmp_path, shm, "tmpfs"), shm) is None


def test_a_tmpdir_the_user_chose_is_kept(
    root_conftest: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(root_conftest, "memory_tempdir", lambda: Path("/elsewhere"))

    root_conftest.temp_files_in_memory()

    assert os.environ["TMPDIR"] == str(tmp_path)
    monkeypatch.delenv("TMPDIR")
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # restored after the test
    root_conftest.temp_files_in_memory()
    assert os.environ["TMPDIR"] == "/elsewhere"
    assert tempfile.tempdir is None  # gettempdir() looks again


def test_what_was_loaded_before_the_tests_is_left_out_of_garbage_collection() -> None:
    # Full collections walked the ~190,000 objects of the plugins and test modules each time.
    assert gc.get_freeze_count() > 10_000
    assert not any(objects is globals() for objects in gc.get_objects(generation=2))


def test_collection_runs_with_the_cycle_collector_paused_and_turns_it_back_on(
    root_conftest: ModuleType,
) -> None:
    # Collection builds only objects that live as long as the worker: ~350 collections freed
    # nothing. However collection ends, the collector is back on for the tests.
    assert gc.isenabled()
    collecting = root_conftest.pytest_collection()
    next(collecting)
    assert not gc.isenabled()
    with pytest.raises(StopIteration):
        collecting.send(None)
    assert gc.isenabled()

    failing = root_conftest.pytest_collection()
    next(failing)
    with pytest.raises(RuntimeError, match="collection failed"):
        failing.throw(RuntimeError("collection failed"))
    assert gc.isenabled()


def test_tests_sharing_a_dear_module_fixture_are_handed_out_together(
    root_conftest: ModuleType,
) -> None:
    unit = root_conftest.work_unit
    resume = "tests/test_batch_resume.py::test_a_resume_checks_its_recorded_items_in_a_few_worker"

    assert unit("docs/batch.md::line:14,column:1") == "docs/batch.md"
    assert unit("tests/test_gallery_browser.py::test_x") == "tests/test_gallery_browser.py"
    assert unit(f"{resume}_thread_calls[trio-True-False]") == unit(
        f"{resume}_thread_calls[asyncio-False-True]"
    )
    assert unit("tests/test_docs_reference.py::test_a") == unit("tests/test_docs_reference.py::b")
    assert unit("tests/test_batch_resume.py::test_other[trio]") == (
        "tests/test_batch_resume.py::test_other[trio]"
    )
    openai = "tests/test_fake_rules.py::test_the_openai_sdk_edits_images_on_the_fake"
    smoke = "tests/test_benchmarks_smoke.py::test_every_other_contender_reads_every_image"
    assert unit(f"{openai}[asyncio]") == unit(f"{openai}[trio]") == unit(smoke) == "import openai"
    layout = "tests/test_layout.py::test_"
    assert unit(f"{layout}the_graph_counts_lazy_and_type_checking_imports") == unit(
        f"{layout}no_import_cycle_between_package_modules"
    )
    # Every group names tests that exist: a renamed test would silently leave its group.
    root = Path(__file__).resolve().parents[1]
    groups = {**root_conftest.SHARED_FIXTURE, **root_conftest.SHARED_IMPORT}
    for group in (test for tests in groups.values() for test in tests):
        path, _, test = group.partition("::")
        assert f"def {test}" in (root / path).read_text(), group


@pytest.mark.parametrize(("cores", "workers"), [(1, 2), (2, 4), (8, 10)])
def test_auto_workers_are_two_more_than_the_cores_at_most_twice_as_many(
    root_conftest: ModuleType, monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    # Tests waiting on real time (rate limits, child processes) left cores idle at one worker
    # per core: see the hook's docstring for the measurements.
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert root_conftest.pytest_xdist_auto_num_workers() == workers


def test_auto_workers_set_in_the_environment_are_left_to_xdist(
    root_conftest: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert root_conftest.pytest_xdist_auto_num_workers() is None


def test_the_controller_writes_each_test_modules_rewritten_code_once_for_every_worker(
    root_conftest: ModuleType, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Each of four workers rewrote every test module itself where bytecode is not written
    # (1.7 s of CPU each at start-up); the controller writes pytest's cache once instead.
    from _pytest.assertion import rewrite

    assert all(hasattr(rewrite, f) for f in ("_read_pyc", "_rewrite_test", "_write_pyc"))
    module = tmp_path / "tests" / "test_example.py"
    module.parent.mkdir()
    module.write_text("def test_sum():\n    assert 1 + 1 == 3\n")
    (tmp_path / "tests" / "helper.py").write_text("x = 1\n")  # not a test module: not rewritten

    assert root_conftest.rewrite_test_modules_once(request.config, tmp_path) == 1
    assert root_conftest.rewrite_test_modules_once(request.config, tmp_path) == 0  # current

    pyc = rewrite.get_cache_dir(module) / f"test_example{rewrite.PYC_TAIL}"
    code = rewrite._read_pyc(module, pyc)  # what a worker's import finds, checked by hash
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code, namespace)  # noqa: S102 - the rewritten module, as pytest would run it
    with pytest.raises(AssertionError, match=r"assert \(1 \+ 1\) == 3"):  # rewritten: explained
        namespace["test_sum"]()  # type: ignore[operator]
    assert [p.name for p in pyc.parent.iterdir()] == [pyc.name]
    module.write_text("def test_sum():\n    assert 1 + 1 == 2\n")  # changed: written again
    assert root_conftest.rewrite_test_modules_once(request.config, tmp_path) == 1


class _Worker:
    """What xdist's scheduler sees of a worker: the orders sent to it, and a stop."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.orders: list[list[int]] = []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.orders.append(list(indexes))

    def shutdown(self) -> None:
        self.shutting_down = True

    def sent(self) -> list[int]:
        return [index for order in self.orders for index in order]


def test_a_worker_killed_mid_test_is_replaced_without_stalling_the_run_or_rerunning_its_test(
    root_conftest: ModuleType,
) -> None:
    # pytest-timeout ended a hung worker on CI, and xdist's scope scheduling then sent the
    # replacement the dead worker's finished tests again as empty orders: the run hung.
    tests = [f"tests/test_x.py::test_{n}" for n in range(8)]
    config = SimpleNamespace(getvalue=lambda name: ["2*popen"] if name == "tx" else None)
    config.option = SimpleNamespace(loadscopereorder=False)
    scheduler = root_conftest.scheduling_class()(config)
    first, second = _Worker("gw0"), _Worker("gw1")
    for worker in (first, second):
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, tests)
    scheduler.schedule()
    assert first.orders == [[0], [2]]
    assert second.orders == [[1], [3]]
    scheduler.mark_test_complete(first, 0)  # test_0 done; test_4 handed out
    assert first.orders[-1] == [4]

    # The first worker dies in test_2: reported failed by xdist, not run again.
    assert scheduler.remove_node(first) == tests[2]
    replacement = _Worker("gw2")
    scheduler.add_node(replacement)
    scheduler.add_node_collection(replacement, tests)
    scheduler.schedule()
    # Two tests at once, as at start-up: a worker runs a test only once it holds the next.
    assert len(replacement.orders) == 2

    done: set[tuple[str, int]] = set()

    def orders_left() -> list[tuple[_Worker, int]]:
        return [
            (worker, index)
            for worker in (second, replacement)
            for index in worker.sent()
            if (worker.gateway.id, index) not in done
        ]

    while pending := orders_left():
        worker, index = pending[0]
        scheduler.mark_test_complete(worker, index)
        done.add((worker.gateway.id, index))
    assert scheduler.tests_finished
    assert scheduler.assigned_work == {second: {}, replacement: {}}  # finished units leave
    assert sorted(second.sent() + replacement.sent()) == [
        1,
        3,
        4,
        5,
        6,
        7,
    ]  # every unfinished test once; none empty, test_2 not again
    assert all(second.orders + replacement.orders)


def test_the_key_leak_check_reads_debug_records_while_pytest_keeps_only_info_and_up() -> None:
    # tests/conftest.py's no_key_in_logs reads every record; pytest's handlers skip DEBUG
    # (httpcore's ~10 lines a request were formatted three times over: pyproject says why).
    root = logging.getLogger()
    assert logging.getLogger("httpcore").isEnabledFor(logging.DEBUG)
    assert any(type(handler).__name__ == "_Collect" for handler in root.handlers)
    capture = [h for h in root.handlers if type(h).__name__ == "LogCaptureHandler"]
    assert capture
    assert all(handler.level == logging.INFO for handler in capture)
