"""What the command line imports before a batch's first request, and how (benchmark W10).

Every millisecond of start-up is paid before the first request goes out, so it adds to a
whole job's makespan. Observed, not timed: in a child process, a finder notes each import of
the modules below (with the collector on or off), an audit hook what is loaded at the first
connection.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanogpt_async.testing import FakeNanoGPT
from tests._serving import run_python

#: Runs the CLI's batch with an audit hook; prints what it saw as one JSON line.
_WATCHED = """
import gc, json, sys
watched = {"aiohttp", "anyio._backends._asyncio", "nanogpt_async._batch._runner"}
seen = {"imported": {}, "at_first_request": None}

class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in watched and name not in seen["imported"]:
            seen["imported"][name] = "collector off" if not gc.isenabled() else "collector on"
        return None  # the next finder finds it

def hook(event, args):
    if event == "socket.connect" and seen["at_first_request"] is None:
        seen["at_first_request"] = sorted(
            name for name, module in sys.modules.items()
            if module is not None and name.split(".")[0] in ("tenacity",)
        )

sys.meta_path.insert(0, Watch)
sys.addaudithook(hook)
from nanogpt_async._cli import main
try:
    main(sys.argv[1:])
except SystemExit as exited:
    print(json.dumps({"code": exited.code, **seen}))
"""


def _run_batch(tmp_path: Path) -> tuple[dict[str, object], FakeNanoGPT, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    out = tmp_path / "out"
    fake = FakeNanoGPT(api_key="startup-key")
    with fake.run_in_thread() as server:
        argv = ["batch", str(prompts), "-o", str(out), "--progress", "none", "--no-gallery"]
        done = run_python(["-c", _WATCHED, *argv], server, "startup-key")
    return json.loads(done.stdout.splitlines()[-1]), fake, out


def test_a_batch_sends_its_first_request_without_the_retry_library_loaded(
    tmp_path: Path,
) -> None:
    # tenacity (~5 ms of CPU to import) is only needed once an attempt fails.
    seen, fake, out = _run_batch(tmp_path)

    assert seen["code"] == 0
    assert seen["at_first_request"] == []
    record = json.loads((out / "manifest.jsonl").read_text())
    assert record["status"] == "ok"
    assert fake.stats.images_generated == len(record["files"]) == 1


def test_a_batch_imports_its_runner_http_stack_and_event_loop_with_the_collector_paused(
    tmp_path: Path,
) -> None:
    # Imported inside the run, they were built with the collector on (and walked by it).
    seen, _, _ = _run_batch(tmp_path)

    assert seen["imported"] == {
        "aiohttp": "collector off",
        "anyio._backends._asyncio": "collector off",
        "nanogpt_async._batch._runner": "collector off",
    }
