"""Run the fake NanoGPT server as a process: ``python -m nanogpt_async.testing --port 0``.

Prints exactly one line, ``NANOGPT_BASE_URL=http://127.0.0.1:PORT/api/v1``, on stdout once
it listens, then serves until SIGINT or SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from nanogpt_async.testing._fake import FakeNanoGPT
from nanogpt_async.testing._server import READY_PREFIX, run_forever

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nanogpt_async.testing._server import FakeServer

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser (reusable by other command lines)."""
    parser = argparse.ArgumentParser(
        prog="python -m nanogpt_async.testing",
        description="Run a fake NanoGPT image API on loopback.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="loopback address to listen on")
    add("--port", type=int, default=0, help="API port (0: any free port)")
    add("--download-port", type=int, default=0, help="signed-URL port (0: any free port)")
    add("--api-key", default="test-key", help="accepted key; empty string accepts any key")
    add("--latency", type=float, default=0.0, help="seconds per generation")
    add("--latency-jitter", type=float, default=0.0, help="latency varies by +- this")
    add("--rate-limit", type=float, default=None, help="requests/second (token bucket)")
    add("--burst", type=int, default=None, help="token bucket capacity")
    add("--daily-request-cap", type=int, default=None, help="generation requests per UTC day")
    add("--daily-usd-cap", type=float, default=None, help="USD charged per UTC day")
    add("--balance", type=float, default=100.0, help="account balance in USD")
    add("--price-per-image", type=float, default=0.005, help="USD per image")
    add("--error-rate", type=float, default=0.0, help="fraction answered 500/502/503")
    add("--reset-rate", type=float, default=0.0, help="fraction charged then reset")
    add("--url-fallback-rate", type=float, default=0.0, help="fraction of url items as b64")
    add("--url-ttl", type=float, default=3600.0, help="signed URL lifetime, seconds")
    add("--file-ttl", type=float, default=86400.0, help="stored file lifetime, seconds")
    add("--download-latency", type=float, default=0.0, help="seconds before a download")
    add("--image-bytes", type=int, default=None, help="approximate PNG size in bytes")
    add("--seed", type=int, default=0, help="seed of all randomness")
    add("--keepalive-timeout", type=float, default=None, help="idle connection timeout")
    return parser


def fake_from_args(args: argparse.Namespace) -> FakeNanoGPT:
    """Build a `FakeNanoGPT` from parsed `build_parser` arguments."""
    return FakeNanoGPT(
        api_key=args.api_key or None,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        rate_limit=args.rate_limit,
        burst=args.burst,
        daily_request_cap=args.daily_request_cap,
        daily_usd_cap=args.daily_usd_cap,
        balance=args.balance,
        price_per_image=args.price_per_image,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        url_fallback_rate=args.url_fallback_rate,
        url_ttl=args.url_ttl,
        file_ttl=args.file_ttl,
        download_latency=args.download_latency,
        image_bytes=args.image_bytes,
        seed=args.seed,
        keepalive_timeout=args.keepalive_timeout,
    )


def _announce(server: FakeServer) -> None:
    sys.stdout.write(f"{READY_PREFIX}{server.base_url}\n")
    sys.stdout.flush()
    sys.stderr.write(
        f"fake NanoGPT: API {server.base_url}, downloads {server.download_base_url}, "
        f"key {server.api_key!r}; Ctrl-C to stop\n"
    )
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        fake = fake_from_args(args)
        run_forever(
            fake,
            args.host,
            args.port,
            download_port=args.download_port,
            ready_callback=_announce,
        )
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
