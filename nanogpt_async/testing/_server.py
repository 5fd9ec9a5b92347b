"""Ways to run a `FakeNanoGPT`: on the current loop, on a thread, or as a process.

The fake listens on loopback only: it hands out unauthenticated signed URLs and accepts a
well-known key, so it must never be reachable from another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nanogpt_async.testing._app import FakeApps

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from nanogpt_async.testing._state import FakeState

__all__ = [
    "FakeServer",
    "check_loopback",
    "run_forever",
    "run_in_thread",
    "serve",
    "serve_until_stopped",
    "start_process",
]

READY_PREFIX = "NANOGPT_BASE_URL="
# Handlers still running at shutdown were cancelled first; this only bounds a straggler.
_SHUTDOWN_TIMEOUT = 2.0
_THREAD_JOIN_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class FakeServer:
    """A running fake server: where it listens and the `FakeNanoGPT` behind it.

    Attributes:
        fake: The state and knobs; change them while the server runs.
        host: The loopback address it listens on.
        api_port: Port of the API listener.
        download_port: Port of the signed-URL (storage host) listener.
    """

    fake: FakeState
    host: str
    api_port: int
    download_port: int

    @property
    def _netloc_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def root_url(self) -> str:
        """``http://host:api_port``, the API listener's origin."""
        return f"http://{self._netloc_host}:{self.api_port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/api/v1``: pass it as the client's base URL."""
        return f"{self.root_url}/api/v1"

    @property
    def v1_base_url(self) -> str:
        """``http://host:port/v1``, the alternative base path the real server also serves."""
        return f"{self.root_url}/v1"

    @property
    def download_base_url(self) -> str:
        """``http://host:download_port``, the origin of signed download URLs."""
        return f"http://{self._netloc_host}:{self.download_port}"

    @property
    def api_key(self) -> str:
        """A key the server accepts."""
        return self.fake.api_key or "test-key"


def check_loopback(host: str) -> str:
    """Return ``host`` as a loopback IP literal, or raise `ValueError`.

    ``"localhost"`` is taken as ``127.0.0.1`` so the answer never depends on resolver setup.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"the fake server listens on loopback only; {host!r} is not an IP address "
            "(use 127.0.0.1, ::1 or localhost)"
        ) from None
    if not address.is_loopback:
        raise ValueError(
            f"the fake server listens on loopback only; refusing {host!r} (use 127.0.0.1)"
        )
    return host


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            # Lets a fixed --port be reused right after a previous run (TIME_WAIT).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.settimeout(0.0)  # non-blocking, as asyncio's servers need
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serve(
    fake: FakeState, host: str = "127.0.0.1", port: int = 0, *, download_port: int = 0
) -> AsyncIterator[FakeServer]:
    """Serve ``fake`` on the running asyncio loop inside an ``async with``.

    Args:
        fake: The state and knobs to serve.
        host: A loopback address.
        port: API listener port (0: any free port).
        download_port: Download listener port (0: any free port).

    Yields:
        The running server.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """
    host = check_loopback(host)
    api_sock = _bind(host, port)
    try:
        download_sock = _bind(host, download_port)
    except BaseException:
        api_sock.close()
        raise
    server = FakeServer(
        fake=fake,
        host=host,
        api_port=api_sock.getsockname()[1],
        download_port=download_sock.getsockname()[1],
    )
    apps = FakeApps(fake, server.root_url, server.download_base_url)
    handler_args: dict[str, Any] = {}
    if fake.keepalive_timeout is not None:
        handler_args["keepalive_timeout"] = fake.keepalive_timeout
    runners = [
        web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT, **handler_args)
        for app in (apps.api, apps.download)
    ]
    try:
        for runner, sock in zip(runners, (api_sock, download_sock), strict=True):
            await runner.setup()
            await web.SockSite(runner, sock).start()
        yield server
    finally:
        await apps.cancel_handlers()
        for runner in runners:
            await runner.cleanup()
        # SockSite does not own the sockets it was given.
        api_sock.close()
        download_sock.close()


class _ThreadRunner:
    """Runs `serve` on a private event loop in a background thread."""

    def __init__(self, fake: FakeState, host: str, port: int, download_port: int) -> None:
        self._args = (fake, host, port, download_port)
        self._ready = threading.Event()
        self._server: FakeServer | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="nanogpt-fake-server", daemon=True)

    def start(self) -> FakeServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        if self._server is None:  # pragma: no cover - set before _ready when there is no error
            raise RuntimeError("the fake server thread signalled ready without a server")
        return self._server

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_THREAD_JOIN_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the fake server thread did not stop")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        fake, host, port, download_port = self._args
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(fake, host, port, download_port=download_port) as server:
            self._server = server
            self._ready.set()
            await self._stop.wait()


@contextlib.contextmanager
def run_in_thread(
    fake: FakeState, host: str = "127.0.0.1", port: int = 0, *, download_port: int = 0
) -> Iterator[FakeServer]:
    """Serve ``fake`` from a background thread with its own asyncio loop.

    Works from sync code and from any async framework, since nothing runs on the
    caller's loop. Ports are bound when this returns; on exit the server stops and the
    thread is joined.

    Args:
        fake: The state and knobs to serve.
        host: A loopback address.
        port: API listener port (0: any free port).
        download_port: Download listener port (0: any free port).

    Yields:
        The running server.
    """
    check_loopback(host)
    runner = _ThreadRunner(fake, host, port, download_port)
    server = runner.start()
    try:
        yield server
    finally:
        runner.stop()


async def serve_until_stopped(
    fake: FakeState,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    download_port: int = 0,
    ready_callback: Callable[[FakeServer], object] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (async form of `run_forever`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = [
        signum for signum in (signal.SIGINT, signal.SIGTERM) if _on_signal(loop, signum, stop.set)
    ]
    try:
        async with serve(fake, host, port, download_port=download_port) as server:
            if ready_callback is not None:
                ready_callback(server)
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _on_signal(
    loop: asyncio.AbstractEventLoop, signum: signal.Signals, callback: Callable[[], object]
) -> bool:
    try:
        loop.add_signal_handler(signum, callback)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
        return False
    return True


def run_forever(
    fake: FakeState,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    download_port: int = 0,
    ready_callback: Callable[[FakeServer], object] | None = None,
) -> None:
    """Serve ``fake`` in this process until SIGINT or SIGTERM, then return normally.

    Meant for command lines (``python -m nanogpt_async.testing``, ``nanogpt-async
    fake-server``); call it from the main thread, outside any event loop.

    Signature: ``run_forever(fake, host="127.0.0.1", port=0, *, download_port=0,
    ready_callback=None) -> None``.

    Args:
        fake: The state and knobs to serve.
        host: A loopback address.
        port: API listener port (0: any free port).
        download_port: Download listener port (0: any free port).
        ready_callback: Called once with the `FakeServer` when both ports are bound,
            e.g. to print ``server.base_url``.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """
    check_loopback(host)
    # Where signal handlers cannot be installed (Windows), Ctrl-C arrives as
    # KeyboardInterrupt; it still means "stop", not "crash".
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve_until_stopped(
                fake, host, port, download_port=download_port, ready_callback=ready_callback
            )
        )


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


@contextlib.contextmanager
def start_process(
    *, startup_timeout: float = 30.0, python: str | None = None, **knobs: object
) -> Iterator[str]:
    """Run the fake in a child process (``python -m nanogpt_async.testing``).

    For benchmarks, where the server must not share the client's CPU or GIL.

    Args:
        startup_timeout: Seconds to wait for the ready line.
        python: Interpreter to use (default: this one).
        **knobs: Command-line options by their `FakeNanoGPT` name, e.g.
            ``latency=1, rate_limit=25, port=0``. ``None`` values are left out.

    Yields:
        The base URL (``http://127.0.0.1:PORT/api/v1``).

    Example:
        >>> with start_process(latency=1.0, rate_limit=25) as base_url:  # doctest: +SKIP
        ...     run_benchmark(base_url)
    """
    argv = [python or sys.executable, "-m", "nanogpt_async.testing"]
    for name, value in knobs.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    # The child must import this very copy of the package, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        timer = threading.Timer(startup_timeout, process.kill)
        timer.start()
        try:
            stdout = process.stdout
            if stdout is None:  # pragma: no cover - stdout=PIPE above
                raise RuntimeError("the fake server process has no stdout pipe")
            line = stdout.readline().strip()
        finally:
            timer.cancel()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(
                f"the fake server process did not start (exit code {process.poll()}, "
                f"first line {line!r})"
            )
        yield line.removeprefix(READY_PREFIX)
    finally:
        _stop_process(process)


def _stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
