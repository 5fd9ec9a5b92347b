"""The exceptions nanogpt-async raises.

Every exception is a `NanoGPTError`; catch that to catch them all:

    NanoGPTError
    ├── InvalidInputError               bad input, refused before anything is paid
    │   ├── ImageInputError             input image unreadable, too big, no image
    │   ├── PromptFileError             a prompt file's line that cannot become a request
    │   ├── RepeatedIdError             two items of a batch carry the same id
    │   └── ShardError                  a shard that cannot be used (bad I/N, none set)
    ├── APIError                        something went wrong talking to NanoGPT
    │   ├── APIStatusError              NanoGPT answered with an error status
    │   │   ├── BadRequestError             400
    │   │   │   └── ContentPolicyViolationError 400 refused prompt, not charged
    │   │   ├── AuthenticationError         401
    │   │   ├── InsufficientBalanceError    402
    │   │   ├── PermissionDeniedError       403
    │   │   ├── NotFoundError               404
    │   │   ├── RequestTimeoutError         408 (retried)
    │   │   ├── ConflictError               409
    │   │   ├── PayloadTooLargeError        413
    │   │   ├── UnprocessableEntityError    422
    │   │   ├── RateLimitError              429 (retried)
    │   │   │   ├── DailyLimitExceededError 429 daily cap: not retried
    │   │   │   └── LocalRateLimitError     our own pacer's turn is too far: nothing sent
    │   │   └── InternalServerError         5xx (retried)
    │   │       └── GatewayError            a proxy's 502/504/52x page: maybe charged
    │   ├── APIConnectionError          no usable answer: refused, reset, garbled
    │   │   └── APITimeoutError         the request timed out
    │   └── APIResponseValidationError  a 2xx answer that cannot be read
    ├── ImageError                      no bytes for a generated image
    │   ├── InvalidImageError           not an image (bad base64, HTML page)
    │   └── ImageDownloadError          a signed URL could not be downloaded
    │       └── ImageURLExpiredError    the signed URL expired or the file is gone
    ├── OutputWriteError                a batch's image or manifest line not written (fatal)
    │   └── FolderInUseError            another run writes into the output folder
    ├── ChargeUncertainError            a sharded item's claimer died: maybe charged, skipped
    └── ItemBusyError                   another live process is doing this sharded item

`FATAL_ERRORS` lists the errors no retry or next item can fix: a batch stops at the first one
and the CLI exits with its "fatal" code.

Messages say what happened and what to do, carry the status, server message, error code and
request id, and never contain the API key: the client redacts it (`redact_error`) from every
error it raises, server-provided text included, before the error leaves the call.

Internal signals (``UndecodableBodyError`` in the HTTP layer, the batch's ``_Abandoned``) are
caught where they are raised. Nothing else escapes a client call: every failure of the HTTP
layer (aiohttp's and httpx's exceptions, malformed answers, decoding errors, redirect loops)
is translated into this tree at the channel's boundary, with ``request_sent`` saying whether
it may have been charged.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nanogpt_async._codec import loads

__all__ = [
    "FATAL_ERRORS",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChargeUncertainError",
    "ConflictError",
    "ContentPolicyViolationError",
    "DailyLimitExceededError",
    "FolderInUseError",
    "GatewayError",
    "ImageDownloadError",
    "ImageError",
    "ImageInputError",
    "ImageURLExpiredError",
    "InsufficientBalanceError",
    "InternalServerError",
    "InvalidImageError",
    "InvalidInputError",
    "ItemBusyError",
    "LocalRateLimitError",
    "NanoGPTError",
    "NotFoundError",
    "OutputWriteError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PromptFileError",
    "RateLimitError",
    "RepeatedIdError",
    "RequestTimeoutError",
    "ShardError",
    "UnprocessableEntityError",
    "parse_error_body",
    "redact",
    "redact_error",
    "redact_url",
    "secret_forms",
    "status_error",
]

#: Error codes NanoGPT uses for a per-key daily cap (429 whose Retry-After is hours away).
DAILY_LIMIT_CODES = frozenset({"daily_rpd_limit_exceeded", "daily_usd_limit_exceeded"})

#: Statuses a gateway (Cloudflare, nginx, a load balancer) answers with when the origin failed
#: or timed out *after* the request may have reached it.
GATEWAY_STATUSES = frozenset({502, 504, 520, 521, 522, 523, 524})

_MAX_BODY_SNIPPET = 300
#: Only this much of an error body is looked at: NanoGPT's errors are a few hundred bytes, a
#: proxy's page puts its <title> near the top, and parsing more on the event loop only helps an
#: attacker (a 400 KB page once froze the loop for 64 s in a quadratic title search).
ERROR_SCAN_BYTES = 64 * 1024
REDACTED = "<redacted>"
#: A bearer credential, whoever's: the word goes too, so nothing reads as one afterwards.
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s'\",;]+")


class NanoGPTError(Exception):
    """Base class of every error raised by nanogpt-async."""


class InvalidInputError(NanoGPTError, ValueError):
    """The arguments cannot make a valid request; nothing was sent and nothing was charged."""


class ImageInputError(InvalidInputError):
    """An input image (``image=``, ``images=``, ``mask=``) is unreadable, too big or no image."""


class APIError(NanoGPTError):
    """A request to NanoGPT failed.

    Attributes:
        message: What happened, in the server's words where it gave any.
        request_id: The ``X-Request-ID`` NanoGPT sent, to quote to support.
    """

    message: str
    request_id: str | None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.message = message
        self.request_id = request_id
        super().__init__(message)

    def __str__(self) -> str:
        if self.request_id and self.request_id not in self.message:
            return f"{self.message} (request id: {self.request_id})"
        return self.message

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Keyword-only __init__ arguments defeat the default pickling; rebuild from __dict__.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class APIStatusError(APIError):
    """NanoGPT answered with an error status.

    Attributes:
        status_code: The HTTP status.
        code: The machine-readable error code when the body had one (``rate_limit_exceeded``...).
        error_type: The OpenAI-style ``type`` when the body had one.
        param: The offending request field when the server named it.
        body: The parsed JSON body, or the text of a non-JSON body (truncated).
        retry_after: Seconds the server asked us to wait, when it said.
    """

    #: What the user can do about it; appended to the message.
    hint = ""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.error_type = error_type
        self.param = param
        self.body = body
        self.retry_after = retry_after
        super().__init__(message, request_id=request_id)

    def __str__(self) -> str:
        parts = [f"NanoGPT answered {self.status_code}: {self.message}"]
        details = []
        if self.code:
            details.append(f"code: {self.code}")
        if self.param:
            details.append(f"param: {self.param}")
        if self.request_id:
            details.append(f"request id: {self.request_id}")
        if details:
            parts.append(f" ({', '.join(details)})")
        if self.hint:
            parts.append(f". {self.hint}")
        return "".join(parts)


class BadRequestError(APIStatusError):
    """400: the request was invalid. Not charged."""

    hint = "Fix the request; retrying it unchanged will fail the same way"


class ContentPolicyViolationError(BadRequestError):
    """400 ``content_policy_violation``: the prompt or image was refused. Not charged."""

    hint = "Change the prompt or input image; this request is refused by the content policy"


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""

    hint = "Check NANOGPT_API_KEY (or api_key=); create a key at https://nano-gpt.com/api"


class InsufficientBalanceError(APIStatusError):
    """402: the account balance cannot pay for this request."""

    hint = "Top up the NanoGPT balance, or lower n/size/model cost"


class PermissionDeniedError(APIStatusError):
    """403: this key may not do this."""

    hint = "This key is not permitted to use this model or route"


class NotFoundError(APIStatusError):
    """404: unknown model or route."""

    hint = "Check the model id (client.images.models() lists them) and the base URL"


class RequestTimeoutError(APIStatusError):
    """408: the server timed the request out (retried)."""


class ConflictError(APIStatusError):
    """409: conflict."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is too large (input images are limited to 4 MB each)."""

    hint = "Send smaller input images (4 MB each at most)"


class UnprocessableEntityError(APIStatusError):
    """422: the request was understood but cannot be processed."""


class RateLimitError(APIStatusError):
    """429: too many requests per second (retried with backoff honouring ``Retry-After``)."""

    hint = "Slow down: lower the concurrency or requests per second"


class DailyLimitExceededError(RateLimitError):
    """429 with a daily-cap code: this key's requests or USD for today are used up.

    Not retried: the cap resets at 00:00 UTC. ``resets_at`` says when (UTC).
    """

    def __init__(self, message: str, *, resets_at: dt.datetime, **kwargs: Any) -> None:
        self.resets_at = resets_at
        super().__init__(message, **kwargs)

    @property
    def hint(self) -> str:  # type: ignore[override]
        """When the cap resets."""
        return (
            f"The daily cap resets at {self.resets_at:%Y-%m-%d %H:%M} UTC; "
            "raise the key's cap on nano-gpt.com or try again then"
        )


class LocalRateLimitError(RateLimitError):
    """Raised before sending: this client's pacer would make the call wait too long.

    The wait (a queue of calls ahead of it, or a 429 cooldown another call received) is longer
    than the client's ``max_wait``. Nothing was sent and nothing was charged. A web backend
    maps it to its own 429 with ``Retry-After: ceil(retry_after)``.

    Attributes:
        retry_after: The seconds the call would have had to wait.
    """

    hint = "Nothing was sent. Try again after that wait, or raise max_wait on the client"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, status_code=429, retry_after=retry_after)

    def __str__(self) -> str:
        return f"{self.message}. {self.hint}"


class InternalServerError(APIStatusError):
    """5xx: a failure on NanoGPT's side (retried)."""

    hint = "A failure on NanoGPT's side; try again later (retried first if the retry policy allows)"


class GatewayError(InternalServerError):
    """502/504/520-524 with a body that is not NanoGPT's (typically a proxy's HTML page).

    The gateway answered because the origin failed or was too slow, possibly *after* it got the
    request: like a reset mid-response, a generation may have been charged. So a paid POST is
    not retried unless ``RetryPolicy(retry_ambiguous=True)``; a JSON error from NanoGPT itself
    (`InternalServerError`) stays retryable.

    Attributes:
        request_sent: Always ``True``: the request reached at least the gateway.
    """

    request_sent = True
    hint = (
        "A gateway in front of NanoGPT answered instead of NanoGPT, so the generation may have "
        "been charged: check the account's usage before generating again "
        "(RetryPolicy(retry_ambiguous=True) retries these automatically)"
    )


class APIConnectionError(APIError):
    """No usable answer: the connection failed, was reset, or broke the protocol.

    Attributes:
        request_sent: ``False`` when the request certainly never reached the server (connection
            refused, pool timeout): safe to retry, nothing was charged. ``True`` when it may have
            reached it (read timeout, reset mid-response): it may have been generated and charged.
    """

    def __init__(self, message: str, *, request_sent: bool, request_id: str | None = None) -> None:
        self.request_sent = request_sent
        super().__init__(message, request_id=request_id)


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, pool, read or write)."""


class APIResponseValidationError(APIError):
    """A 2xx answer that is not what NanoGPT documents (invalid JSON, missing ``data``...).

    The request may have been charged. ``body`` holds what we could read of it.
    """

    def __init__(self, message: str, *, request_id: str | None = None, body: object = None) -> None:
        self.body = body
        super().__init__(message, request_id=request_id)


class ImageError(NanoGPTError):
    """A generated image could not be turned into bytes."""


class InvalidImageError(ImageError):
    """The bytes are not a PNG/JPEG/WebP/GIF image (invalid base64, an HTML error page...)."""


class ImageDownloadError(ImageError):
    """Downloading a signed image URL failed.

    Attributes:
        url: The URL without its query string (the signature is a credential of its own).
        status_code: The HTTP status, when there was an answer.
    """

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        self.url = url
        self.status_code = status_code
        super().__init__(message)


class ImageURLExpiredError(ImageDownloadError):
    """The signed URL expired (403) or the file is gone (404); generate again to get it."""


# -- input files and shards (the CLI's and the batch's inputs) ---------------------------------


class PromptFileError(InvalidInputError):
    """A line of a prompt file cannot become a request.

    Attributes:
        source: The file name (``"<stdin>"`` for standard input).
        line: The 1-based line number (for CSV: where the record starts).
    """

    def __init__(self, message: str, *, source: str, line: int) -> None:
        """Build the error; ``str()`` reads ``"prompts.jsonl line 7: ..."``."""
        self.source = source
        self.line = line
        super().__init__(f"{source} line {line}: {message}")


class RepeatedIdError(InvalidInputError):
    """Two input items of a batch carry the same id."""


class ShardError(InvalidInputError):
    """A shard that cannot be used: a bad ``I/N``, or an environment that names none."""


# -- the batch: its output folder and its fence ----------------------------------------------


class OutputWriteError(NanoGPTError):
    """An image or manifest line could not be written to the output folder (disk full...).

    The batch treats it as fatal: every later item would fail the same way.
    """


class FolderInUseError(OutputWriteError):
    """Another batch (in this or another process) is writing into the same output folder.

    Two runs into one folder would each pay for every item and sweep each other's temp files,
    so a batch holds an OS lock on ``.nanogpt-batch.lock`` inside its folder for the whole run.

    Attributes:
        folder: The output folder.
        pid: The process id of the run holding the lock, when it could be read.
        host: The host name of that run, when it could be read.
    """

    def __init__(
        self, message: str, *, folder: Path, pid: int | None = None, host: str | None = None
    ) -> None:
        """Build the error; ``str()`` is ``message``."""
        super().__init__(message)
        self.folder = folder
        self.pid = pid
        self.host = host


class ChargeUncertainError(NanoGPTError):
    """The item's process died after claiming it: its request may have been sent and charged.

    Skipped, so it is not paid twice; ``--retry-ambiguous`` generates it again.
    """


class ItemBusyError(NanoGPTError):
    """Another live process (the same shard started twice) is doing this item now."""


#: Errors no retry or next item can fix (the key, the money, the permission, the day's cap): a
#: batch stops scheduling at the first one and the CLI exits with its "fatal" code.
FATAL_ERRORS: tuple[type[NanoGPTError], ...] = (
    AuthenticationError,
    InsufficientBalanceError,
    PermissionDeniedError,
    DailyLimitExceededError,
)


def _first_str(*values: object) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _html_title(text: str) -> str | None:
    """The text of the first ``<title>``, found in linear time (``str.find``, no regex)."""
    lowered = text.lower()
    start = lowered.find("<title")
    if start == -1:
        return None
    open_end = lowered.find(">", start)
    if open_end == -1:
        return None
    close = lowered.find("</title", open_end)
    if close == -1:
        return None
    return text[open_end + 1 : close].strip() or None


def parse_error_body(content: bytes, content_type: str = "") -> tuple[str, dict[str, Any]]:
    """Turn any error body into ``(message, fields)``; never raises.

    Understands the OpenAI shape ``{"error": {"message", "type", "code", "param"}}``, the legacy
    ``{"error": "Insufficient balance", "status": 402, ...}``, the spec's
    ``{"error": 400, "message": "..."}``, bare ``{"message": ...}``/``{"detail": ...}``, and
    non-JSON bodies (HTML from a proxy, plain text, nothing at all). ``fields`` holds ``code``,
    ``type``, ``param`` and ``body`` where found. Only the first `ERROR_SCAN_BYTES` bytes
    are looked at, so the work is bounded whatever the server sends.
    """
    truncated = len(content) > ERROR_SCAN_BYTES
    head = content[:ERROR_SCAN_BYTES]
    text = head.decode("utf-8", "replace").strip()
    fields: dict[str, Any] = {}
    data: object = None
    if text and not truncated and (text[0] in "{[" or "json" in content_type):
        try:
            data = loads(head)
        except ValueError:
            data = None
    if isinstance(data, Mapping):
        return _parse_error_object(data, text), _error_fields(data)
    if not text:
        return "empty response body", fields
    if data is not None:  # JSON, but not an object
        fields["body"] = data
        return f"unrecognised error body: {text[:_MAX_BODY_SNIPPET]}", fields
    fields["body"] = text[:_MAX_BODY_SNIPPET]
    # An HTML page from a proxy: its <title> is the most useful line in it.
    title = _html_title(text)
    if title:
        return f"non-JSON response: {' '.join(title.split())[:200]}", fields
    return f"non-JSON response: {' '.join(text[:1000].split())[:200]}", fields


def _error_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """``code``, ``type``, ``param`` and ``body`` of a JSON error object, wherever they sit.

    A daily-cap code wins wherever it is (``error.code``, top-level ``code``, either ``type``):
    missing it turns a cap into an ordinary 429 that is retried until the retries run out.
    Otherwise a string code beats a number (often the HTTP status repeated).
    """
    err = data.get("error")
    inner: Mapping[str, Any] = err if isinstance(err, Mapping) else {}
    codes = [inner.get("code"), data.get("code")]
    types = [inner.get("type"), data.get("type")]
    daily = [v for v in (*codes, *types) if isinstance(v, str) and v in DAILY_LIMIT_CODES]
    strings = [v for v in codes if isinstance(v, str) and v.strip()]
    numbers = [str(v) for v in codes if isinstance(v, int) and not isinstance(v, bool)]
    param = inner.get("param")
    return {
        "body": dict(data),
        "code": next(iter(daily or strings or numbers), None),
        "type": next((t for t in types if isinstance(t, str)), None),
        "param": param if isinstance(param, str) else None,
    }


def _parse_error_object(data: Mapping[str, Any], text: str) -> str:
    err = data.get("error")
    message = None
    if isinstance(err, Mapping):
        message = _first_str(err.get("message"), err.get("detail"))
    elif isinstance(err, str):
        message = _first_str(err)
    message = message or _first_str(
        data.get("message"), data.get("detail"), data.get("error_description")
    )
    if message is None:
        snippet = text[:_MAX_BODY_SNIPPET]
        message = f"unrecognised error body: {snippet}" if snippet else "no error message"
    return message


@functools.lru_cache(maxsize=64)
def secret_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret as it may appear in text: as is and URL-encoded; longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) >= 4:
            forms.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)})
    return tuple(sorted(forms, key=len, reverse=True))


def redact_url(url: str) -> str:
    """The URL without its query string: a signed URL's signature is a credential of its own."""
    return url.split("?", 1)[0]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret (and its URL-encoded forms) and any bearer token replaced."""
    for form in secret_forms(tuple(secrets)):
        if form in text:
            text = text.replace(form, REDACTED)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(REDACTED, text)
    return text


def _redact_value(value: object, secrets: list[str], depth: int = 0) -> object:
    if isinstance(value, str):
        return redact(value, secrets)
    if depth > 20:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            redact(str(k), secrets): _redact_value(v, secrets, depth + 1) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_value(v, secrets, depth + 1) for v in value]
    return value


def redact_error(error: NanoGPTError, secrets: Iterable[str]) -> NanoGPTError:
    """Redact the secrets from every text an error carries (message, body, code, URL...), in place.

    The client runs every error it raises through this, so a server echoing the key (in a
    message, a body, a header such as ``X-Request-ID``, a URL) never gets it into an exception's
    text or repr, a log line or a manifest.
    """
    forms = list(secrets)
    error.args = tuple(_redact_value(arg, forms) for arg in error.args)
    for name, value in list(vars(error).items()):
        if isinstance(value, (str, Mapping, list, tuple)):
            setattr(error, name, _redact_value(value, forms))
    return error


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(
    status_code: int,
    content: bytes,
    *,
    content_type: str = "",
    request_id: str | None = None,
    retry_after: float | None = None,
    now: dt.datetime | None = None,
) -> APIStatusError:
    """Build the right `APIStatusError` subclass for an error response."""
    message, fields = parse_error_body(content, content_type)
    code = fields.get("code")
    kwargs: dict[str, Any] = {
        "status_code": status_code,
        "request_id": request_id,
        "code": code,
        "error_type": fields.get("type"),
        "param": fields.get("param"),
        "body": fields.get("body"),
        "retry_after": retry_after,
    }
    if status_code == 429 and code in DAILY_LIMIT_CODES:
        now = now or dt.datetime.now(dt.timezone.utc)
        if retry_after is not None and retry_after > 0:
            resets_at = now + dt.timedelta(seconds=retry_after)
        else:
            # No usable Retry-After: NanoGPT's daily caps reset at 00:00 UTC.
            resets_at = (now + dt.timedelta(days=1)).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
        return DailyLimitExceededError(message, resets_at=resets_at, **kwargs)
    if status_code in GATEWAY_STATUSES and not isinstance(fields.get("body"), dict):
        return GatewayError(message, **kwargs)
    if status_code == 400 and (
        code == "content_policy_violation" or fields.get("type") == "content_policy_violation"
    ):
        return ContentPolicyViolationError(message, **kwargs)
    cls = _STATUS_CLASSES.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(message, **kwargs)
