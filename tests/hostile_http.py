"""A hostile raw-HTTP server for the client's boundary tests: it charges like NanoGPT, then lies.

An asyncio TCP server on 127.0.0.1 that reads each request fully and, for a generation, counts
it as charged the moment it has read it (NanoGPT charges every completed generation, even when
the client hangs up afterwards). Then it answers with whatever malformation the test queued: an
oversized header, a bad status line, a bad ``Content-Encoding``, a gzip bomb, a chunked giant
without ``Content-Length``, a redirect loop, a gateway's HTML page, the key echoed back, a body
dripped one byte at a time. Raw bytes on a socket, so nothing a well-behaved framework would
refuse to send is out of reach.

Routes: ``POST /api/v1/images/generations`` and ``/edits`` (charged), ``GET
/api/v1/image-models`` (the price list: hidream at $0.01), anything else a signed-URL download
(not charged). Anything not queued answers like NanoGPT would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gzip
import json
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from nanogpt_async.testing import make_png

GENERATIONS = "/api/v1/images/generations"
EDITS = "/api/v1/images/edits"
PNG = make_png("hostile")


@dataclass
class Request:
    """What the server read: enough to answer and to echo."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")

    @property
    def n(self) -> int:
        with contextlib.suppress(ValueError, AttributeError):
            n = json.loads(self.body).get("n", 1)
            return n if isinstance(n, int) and n > 0 else 1
        return 1


Answer = Callable[["HostileServer", asyncio.StreamWriter, Request], Awaitable[bool]]


@dataclass
class Stats:
    """Money and traffic as the server saw them."""

    charged: int = 0
    generation_requests: int = 0
    downloads: int = 0
    model_lists: int = 0
    peers_gone: int = 0
    #: TCP connections accepted (a client reusing a kept-alive connection opens no new one).
    connections: int = 0
    answers: list[str] = field(default_factory=list)


def head(status: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_answer(
    payload: object, status: str = "200 OK", extra: list[tuple[str, str]] | None = None
) -> bytes:
    body = json.dumps(payload).encode()
    extra = extra or []
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if not any(name.lower() == "x-request-id" for name, _ in extra):
        headers.append(("X-Request-ID", "req_hostile"))
    headers += extra
    return head(status, headers) + body


def generation(server: HostileServer, request: Request, *, url: bool = False) -> dict[str, object]:
    item: dict[str, str]
    if url:
        item = {"url": f"{server.base}/files/ok.png?X-Amz-Signature=sig"}
    else:
        item = {"b64_json": base64.b64encode(PNG).decode()}
    return {"created": 1, "data": [item] * request.n, "cost": 0.01 * request.n}


# -- answers: each writes its bytes and says whether the connection may be reused ------------


async def ok(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
    writer.write(json_answer(generation(server, request)))
    return True


async def ok_url(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
    writer.write(json_answer(generation(server, request, url=True)))
    return True


async def models(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
    price = {"per_image": {"1024*1024": 0.01}, "currency": "USD"}
    writer.write(json_answer({"data": [{"id": "hidream", "pricing": price}]}))
    return True


async def png(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
    writer.write(
        head("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))]) + PNG
    )
    return True


def huge_header(size: int = 100_000) -> Answer:
    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(head("200 OK", [("X-Padding", "a" * size), ("Content-Length", "2")]) + b"{}")
        return False

    return answer


def raw(data: bytes, *, keep: bool = False) -> Answer:
    """Send ``data`` as it is (a bad status line, a truncated answer...)."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(data)
        return keep

    return answer


def echo_key_status_line() -> Answer:
    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(f"HTTP/1.1 2x0 {request.authorization}\r\n\r\n".encode())
        return False

    return answer


def echo_key_error(status: str = "400 Bad Request") -> Answer:
    """A JSON error whose message, code, request id and a URL all carry the key."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        key = request.authorization.removeprefix("Bearer ")
        payload = {
            "error": {"message": f"bad request for key {key}", "code": key, "param": key},
            "url": f"https://x.test/?k={key}",
        }
        writer.write(json_answer(payload, status, extra=[("X-Request-ID", f"req-{key}")]))
        return True

    return answer


def echo_key_success() -> Answer:
    """A paid answer whose request id, URL and extra fields carry the key."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        key = request.authorization.removeprefix("Bearer ")
        payload = {
            "created": 1,
            "data": [{"url": f"{server.base}/files/{key}.png?sig={key}", "revised_prompt": key}],
            "cost": 0.01,
            "note": f"Bearer {key}",
        }
        writer.write(json_answer(payload, extra=[("X-Request-ID", f"req-{key}")]))
        return True

    return answer


def encoded(content_encoding: str, body: bytes, status: str = "200 OK") -> Answer:
    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", content_encoding),
            ("Content-Length", str(len(body))),
        ]
        writer.write(head(status, headers) + body)
        return False

    return answer


def gzip_bomb(decompressed: int) -> Answer:
    """A small gzip body that expands to ``decompressed`` bytes of spaces (valid JSON padding)."""
    return encoded("gzip", _gzipped_spaces(decompressed))


@functools.cache
def _gzipped_spaces(size: int) -> bytes:
    # Compressing 256 MiB took 0.74 s of CPU, 0.47 s as runs (Z_RLE: the same 261 KB); the same
    # bytes serve every test in the process.
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16, 9, zlib.Z_RLE)
    block = b" " * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + compressor.flush()


def gzipped(payload: object) -> Answer:
    return encoded("gzip", gzip.compress(json.dumps(payload).encode()))


def chunked_giant(size: int, piece: int = 64 * 1024) -> Answer:
    """A chunked body of ``size`` bytes with no Content-Length."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(
            head("200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
        )
        sent = 0
        while sent < size:
            chunk = b" " * min(piece, size - sent)
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return False

    return answer


def big_chunked_answer(image_bytes: int) -> Answer:
    """A valid generation answer, chunked without Content-Length, with a big image."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        payload = generation(server, request)
        payload["data"] = [{"b64_json": base64.b64encode(PNG + b"\0" * image_bytes).decode()}]
        body = json.dumps(payload).encode()
        writer.write(
            head("200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
        )
        for start in range(0, len(body), 256 * 1024):
            chunk = body[start : start + 256 * 1024]
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"0\r\n\r\n")
        return True

    return answer


def drip(every: float, total: int = 10_000_000) -> Answer:
    """Headers, then one byte of body every ``every`` seconds, forever in practice."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(
            head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(total))])
        )
        for _ in range(total):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(every)
        return False

    return answer


def silence() -> Answer:
    """Read the request (charged), then never answer."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        await asyncio.Event().wait()
        return False

    return answer


def gateway_page(status: str = "502 Bad Gateway") -> Answer:
    body = b"<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
    return raw(
        head(status, [("Content-Type", "text/html"), ("Content-Length", str(len(body)))]) + body,
        keep=True,
    )


def nanogpt_error(status: str = "502 Bad Gateway") -> Answer:
    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(json_answer({"error": {"message": "upstream model failed"}}, status))
        return True

    return answer


def redirect_loop() -> Answer:
    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        location = f"{server.base}{request.path.split('?')[0]}?X-Amz-Signature=loop"
        writer.write(head("302 Found", [("Location", location), ("Content-Length", "0")]))
        return True

    return answer


def urls(*values: str) -> Answer:
    """A paid answer listing these image URLs."""

    async def answer(server: HostileServer, writer: asyncio.StreamWriter, request: Request) -> bool:
        payload = {"created": 1, "data": [{"url": value} for value in values], "cost": 0.01}
        writer.write(json_answer(payload))
        return True

    return answer


class HostileServer:
    """The server; queue answers per route with `queue`, read money in `stats`."""

    def __init__(self) -> None:
        self.stats = Stats()
        self._queues: dict[str, deque[Answer]] = {
            "generate": deque(),
            "download": deque(),
            "models": deque(),
        }
        self._default: dict[str, Answer] = {"generate": ok, "download": png, "models": models}
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.base}/api/v1"

    def queue(self, answer: Answer, count: int = 1, route: str = "generate") -> None:
        self._queues[route].extend([answer] * count)

    def always(self, answer: Answer, route: str = "generate") -> None:
        self._default[route] = answer

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            raw_head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = raw_head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                body += await reader.readexactly(size + 2)
                if size == 0:
                    break
        return Request(method, path, headers, body[: len(body)])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            while (request := await self._read(reader)) is not None:
                paid = GENERATIONS in request.path or EDITS in request.path
                route = "generate" if paid else "download"
                if "/image-models" in request.path:
                    route = "models"
                if route == "generate":
                    self.stats.generation_requests += 1
                    # Read in full: NanoGPT generates and charges whatever happens next.
                    self.stats.charged += 1
                elif route == "download":
                    self.stats.downloads += 1
                else:
                    self.stats.model_lists += 1
                queued = self._queues[route]
                answer = queued.popleft() if queued else self._default[route]
                self.stats.answers.append(getattr(answer, "__qualname__", repr(answer)))
                keep = await answer(self, writer, request)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.stats.peers_gone += 1
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[HostileServer]:
        """Serve from a thread with its own asyncio loop (for clients under trio)."""
        ready = threading.Event()
        stop: list[asyncio.Event] = []
        loop_box: list[asyncio.AbstractEventLoop] = []

        async def serve() -> None:
            async with self.running():
                stop.append(asyncio.Event())
                loop_box.append(asyncio.get_running_loop())
                ready.set()
                await stop[0].wait()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        ready.wait(10)
        try:
            yield self
        finally:
            loop_box[0].call_soon_threadsafe(stop[0].set)
            thread.join(10)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HostileServer]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
