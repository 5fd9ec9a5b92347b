"""Scripted faults: deterministic misbehaviour queued on the fake server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Fault", "FaultKind", "Route"]

Route = Literal["generations", "edits", "download", "image-models", "check-balance"]
"""Where a queued fault applies: the generation POST, the edit POST, the signed-URL download
listener, the model catalogue or the balance route."""

FaultKind = Literal[
    "status",
    "rate_limited",
    "daily_cap",
    "reset_before_response",
    "reset_after_charge",
    "short_body",
    "invalid_json",
    "empty_data",
    "item_without_image",
    "invalid_base64",
    "html",
    "download_html",
    "download_stall",
    "redirect_to_api_host",
]

# Faults that answer before the request is processed: never charged, valid on any route
# that makes sense for them.
PRE_PROCESSING_KINDS: frozenset[str] = frozenset(
    {"status", "rate_limited", "daily_cap", "reset_before_response", "html"}
)
# Faults that corrupt an otherwise successful, charged generation.
POST_CHARGE_KINDS: frozenset[str] = frozenset(
    {"reset_after_charge", "short_body", "invalid_json", "item_without_image", "invalid_base64"}
)
DOWNLOAD_KINDS: frozenset[str] = frozenset(
    {"status", "download_html", "download_stall", "redirect_to_api_host", "reset_before_response"}
)
GENERATION_KINDS: frozenset[str] = PRE_PROCESSING_KINDS | POST_CHARGE_KINDS | {"empty_data"}
OTHER_ROUTE_KINDS: frozenset[str] = frozenset({"status", "reset_before_response", "html"})


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, queued with `FakeNanoGPT.enqueue`.

    Build faults with the class methods rather than the constructor; each documents
    whether the fake charges the account for the request it spoils.

    Example:
        >>> fake = FakeNanoGPT()
        >>> fake.enqueue(Fault.status(503, retry_after="2"), count=2)
        >>> fake.enqueue(Fault.download_html())  # route inferred: "download"

    Attributes:
        kind: Which misbehaviour.
        code: HTTP status for faults that answer with one.
        body: Response body: a dict (sent as JSON), str or bytes; ``None`` for the default.
        headers: Extra response headers.
        retry_after: ``Retry-After`` header value, if any.
        seconds: Stall duration for `download_stall`.
        detail: Kind-specific detail (the cap kind for `daily_cap`).
    """

    kind: FaultKind
    code: int | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: str | None = None
    seconds: float = 0.0
    detail: str = ""

    @property
    def charged(self) -> bool:
        """Whether the account is charged for a generation this fault spoils."""
        return self.kind in POST_CHARGE_KINDS

    @property
    def default_route(self) -> Route:
        """The route `FakeNanoGPT.enqueue` uses when none is given."""
        if self.kind in {"download_html", "download_stall", "redirect_to_api_host"}:
            return "download"
        return "generations"

    @classmethod
    def status(
        cls,
        code: int,
        body: dict[str, Any] | str | bytes | None = None,
        headers: dict[str, str] | None = None,
        retry_after: str | float | None = None,
    ) -> Fault:
        """Answer with HTTP ``code``; not charged.

        Args:
            code: Any HTTP status.
            body: A dict (JSON), str or bytes. Default: an OpenAI-style
                ``{"error": {"message", "type", "code"}}`` body.
            headers: Extra response headers.
            retry_after: ``Retry-After`` header value (seconds or an HTTP date).
        """
        return cls(
            kind="status",
            code=code,
            body=body,
            headers=tuple((headers or {}).items()),
            retry_after=None if retry_after is None else str(retry_after),
        )

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = "1") -> Fault:
        """Answer 429 ``rate_limit_exceeded`` with ``Retry-After``; not charged."""
        return cls(
            kind="rate_limited",
            code=429,
            retry_after=None if retry_after is None else str(retry_after),
        )

    @classmethod
    def daily_cap(cls, kind: Literal["rpd", "usd"] = "rpd") -> Fault:
        """Answer 429 ``daily_<kind>_limit_exceeded``, ``Retry-After`` = seconds to 00:00 UTC.

        Not charged.
        """
        if kind not in {"rpd", "usd"}:
            raise ValueError(f"daily cap kind must be 'rpd' or 'usd', not {kind!r}")
        return cls(kind="daily_cap", code=429, detail=kind)

    @classmethod
    def reset_before_response(cls) -> Fault:
        """Close the connection without answering; not charged."""
        return cls(kind="reset_before_response")

    @classmethod
    def reset_after_charge(cls) -> Fault:
        """Charge, send the headers and part of the body, then abort the connection.

        The "generated and charged, but the client never saw it" case.
        """
        return cls(kind="reset_after_charge")

    @classmethod
    def short_body(cls) -> Fault:
        """Charge, announce a longer ``Content-Length`` than is sent, then close."""
        return cls(kind="short_body")

    @classmethod
    def invalid_json(cls) -> Fault:
        """Charge, then answer 200 with a body that is not JSON."""
        return cls(kind="invalid_json", code=200)

    @classmethod
    def empty_data(cls) -> Fault:
        """Answer 200 with ``"data": []`` and ``"cost": 0``; not charged."""
        return cls(kind="empty_data", code=200)

    @classmethod
    def item_without_image(cls) -> Fault:
        """Charge, then answer 200 whose first item has neither ``url`` nor ``b64_json``."""
        return cls(kind="item_without_image", code=200)

    @classmethod
    def invalid_base64(cls) -> Fault:
        """Charge, then answer 200 whose first item's ``b64_json`` is not valid base64."""
        return cls(kind="invalid_base64", code=200)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """Answer with a proxy's HTML page (``text/html``) and ``status``; not charged."""
        return cls(kind="html", code=status)

    @classmethod
    def download_html(cls) -> Fault:
        """Download route: answer 200 ``text/html`` instead of the image."""
        return cls(kind="download_html", code=200)

    @classmethod
    def download_stall(cls, seconds: float) -> Fault:
        """Download route: send 200 headers, stall ``seconds``, then send the image.

        The stall ends early (connection dropped) when the server stops.
        """
        if seconds < 0:
            raise ValueError("stall seconds must be >= 0")
        return cls(kind="download_stall", code=200, seconds=float(seconds))

    @classmethod
    def redirect_to_api_host(cls) -> Fault:
        """Download route: answer 302 to the API listener's ``/capture``.

        ``/capture`` records the headers it receives in ``stats.captured_headers``, so a
        test can check that no credentials followed the redirect.
        """
        return cls(kind="redirect_to_api_host", code=302)
