"""The fake server's HTTP side: two aiohttp applications sharing one `FakeNanoGPT`.

* the API listener: ``/api/v1`` and ``/v1`` routes (generations, edits, image-models),
  ``/api/check-balance`` and ``/capture``;
* the download listener, a different origin like a storage host, serving signed URLs
  (`_storage`). How answers and faults are written: `_replies`.

Requests are refused the way NanoGPT documents (see ``_catalog`` for the per-model rules): 400
with an OpenAI-style error object, 401 ``missing_api_key``/``invalid_api_key``, 404 for an unknown
model, 413 for an input image over 4 MB after encoding (the data URL's length).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import math
import re
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nanogpt_async._sniff import sniff_image
from nanogpt_async.testing._catalog import (
    MODELS,
    check_model_rules,
    images_returned,
    model_listing,
)
from nanogpt_async.testing._faults import PRE_PROCESSING_KINDS, Fault, Route
from nanogpt_async.testing._png import make_png_b64
from nanogpt_async.testing._replies import (
    Base64Text,
    Dropped,
    daily_cap_answer,
    error_type,
    fault_answer,
    json_response,
    openai_error,
    spoiled_answer,
)
from nanogpt_async.testing._storage import StorageHost

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nanogpt_async.testing._state import FakeState

__all__ = ["FakeApps"]

#: The longest data URL accepted per input image: "4 MB or smaller after encoding".
MAX_INPUT_IMAGE_BYTES = 4 * 1024 * 1024
# Large enough that our own 413 check (per data URL) answers, not aiohttp's limit.
_CLIENT_MAX_SIZE = 64 * 1024 * 1024
_DATA_URL = re.compile(r"data:image/(?:jpeg|jpg|png|webp|gif);base64,(?P<data>.*)", re.DOTALL)
_CONTENT_POLICY = re.compile(r"\bforbidden\b", re.IGNORECASE)
_SERVER_ERRORS = [500, 502, 503]
_RESPONSE_FORMATS = frozenset({"url", "b64_json"})
_NANO_ADDRESS = "nano_1fake" + "x" * 55


@dataclasses.dataclass(frozen=True)
class _Invalid:
    status: int
    message: str
    param: str | None
    code: str


@dataclasses.dataclass(frozen=True)
class _GenerationRequest:
    prompt: str
    model: str
    n: int  # images returned and charged (a model's fixed_image_count wins over the body's n)
    response_format: str


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity/-Infinity; JSON (and NanoGPT's parser) does not.
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """Parse a request body strictly: no NaN/Infinity; deep nesting is ``ValueError`` too."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


async def _read_body(request: web.Request, *, edit: bool) -> Any:
    """The request's JSON body; an edit may also come as multipart (what the OpenAI SDK sends).

    Raises:
        ValueError: the body cannot be parsed.
    """
    if edit and request.content_type == "multipart/form-data":
        return await _multipart_edit(request)
    return parse_json(await request.text())


async def _multipart_edit(request: web.Request) -> dict[str, Any]:
    """Convert a multipart edit to the JSON body, as NanoGPT does for authenticated callers.

    Files ``image`` (or ``image[]``, repeated) and ``mask`` become data URLs typed from their
    bytes; ``n`` becomes an integer; other fields stay strings.
    """
    form = await request.post()
    body: dict[str, Any] = {}
    images: list[str] = []
    for name, value in form.items():
        if isinstance(value, web.FileField):
            url = _file_data_url(value.file.read())
            if name in {"image", "image[]"}:
                images.append(url)
            elif name == "mask":
                body["maskDataUrl"] = url
            continue
        text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
        body[name] = int(text) if name == "n" and text.strip().isdecimal() else text
    if len(images) == 1:
        body["imageDataUrl"] = images[0]
    elif images:
        body["imageDataUrls"] = images
    return body


def _file_data_url(data: bytes) -> str:
    kind = sniff_image(data)
    mime = kind.mime if kind is not None else "application/octet-stream"  # refused later
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _whole(value: object) -> object:
    """``2.0`` -> ``2``: JSON Schema's ``integer`` accepts whole-number floats, so do we."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _validate_data_url(value: object, param: str) -> _Invalid | None:
    if not isinstance(value, str) or (match := _DATA_URL.fullmatch(value)) is None:
        return _Invalid(
            400,
            f"'{param}' must be a data URL 'data:image/<jpeg|jpg|png|webp|gif>;base64,<data>'; "
            "remote URLs are not fetched",
            param,
            "invalid_image_data_url",
        )
    # "4 MB or smaller after encoding": the data URL itself, checked before decoding it.
    if len(value) > MAX_INPUT_IMAGE_BYTES:
        return _too_large(param, len(value))
    try:
        decoded = base64.b64decode(match["data"], validate=True)
    except binascii.Error:
        return _Invalid(400, f"'{param}' is not valid base64", param, "invalid_image_data_url")
    if not decoded:
        return _Invalid(400, f"'{param}' holds no image data", param, "invalid_image_data_url")
    return None


def _too_large(param: str, length: int) -> _Invalid:
    return _Invalid(
        413,
        f"'{param}' is {length} bytes after encoding; input images must be 4 MB or smaller "
        "after encoding",
        param,
        "payload_too_large",
    )


def _bad(param: str, message: str) -> _Invalid:
    return _Invalid(400, message, param, "invalid_value")


def _validate_number(
    body: dict[str, Any], param: str, low: float, high: float, *, integer: bool = False
) -> _Invalid | None:
    if param not in body:
        return None
    value = _whole(body[param]) if integer else body[param]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        return _bad(param, f"'{param}' must be {kind} between {low:g} and {high:g}")
    return None


def validate_generation(body: object, *, edit: bool = False) -> _GenerationRequest | _Invalid:
    """Check a generation (or, with ``edit``, an edit) body the way the real server does."""
    if not isinstance(body, dict):
        return _bad("body", "the request body must be a JSON object")
    parsed = _validate_core(body)
    if isinstance(parsed, _Invalid):
        return parsed
    invalid = _validate_options(body)
    if invalid is not None:
        return invalid
    refusal = check_model_rules(
        parsed.model,
        n=parsed.n,
        size=body.get("size"),
        has_image="imageDataUrl" in body or bool(body.get("imageDataUrls")),
        has_mask="maskDataUrl" in body,
        edit=edit,
    )
    if refusal is not None:
        return _bad(refusal.param, refusal.message)
    return dataclasses.replace(parsed, n=images_returned(parsed.model, parsed.n))


def _validate_core(body: dict[str, Any]) -> _GenerationRequest | _Invalid:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _bad("prompt", "'prompt' is required and must be a non-empty string")
    model = body.get("model", "hidream")
    if not isinstance(model, str):
        return _bad("model", "'model' must be a string")
    if model not in MODELS:
        return _Invalid(404, f"The model '{model}' does not exist", "model", "model_not_found")
    n = _whole(body.get("n", 1))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return _bad("n", "'n' must be a positive integer")
    response_format = body.get("response_format", "b64_json")
    if response_format not in _RESPONSE_FORMATS:
        return _bad("response_format", "'response_format' must be 'url' or 'b64_json'")
    return _GenerationRequest(prompt, model, n, str(response_format))


def _validate_options(body: dict[str, Any]) -> _Invalid | None:
    for param in ("size", "user"):
        if param in body and not isinstance(body[param], str):
            return _bad(param, f"'{param}' must be a string")
    for param, low, high, integer in (
        ("strength", 0, 1, False),
        ("guidance_scale", 0, 20, False),
        ("num_inference_steps", 1, 100, True),
        ("seed", -(2**63), 2**64 - 1, True),
    ):
        if (invalid := _validate_number(body, param, low, high, integer=integer)) is not None:
            return invalid
    return _validate_images(body)


def _validate_images(body: dict[str, Any]) -> _Invalid | None:
    for param in ("imageDataUrl", "maskDataUrl"):
        if param in body and (invalid := _validate_data_url(body[param], param)) is not None:
            return invalid
    if "imageDataUrls" in body:
        urls = body["imageDataUrls"]
        if not isinstance(urls, list):
            return _bad("imageDataUrls", "'imageDataUrls' must be an array of data URLs")
        for url in urls:
            if (invalid := _validate_data_url(url, "imageDataUrls")) is not None:
                return invalid
    return None


class FakeApps:
    """The two aiohttp applications of one running fake, and their in-flight handlers."""

    def __init__(self, fake: FakeState, api_root: str, download_root: str) -> None:
        """Build the applications; the roots are the listeners' ``http://host:port``."""
        self.fake = fake
        self.api_root = api_root
        self.download_root = download_root
        self._tasks: set[asyncio.Task[Any]] = set()

        self.api = web.Application(
            middlewares=[self._track, self._api_errors], client_max_size=_CLIENT_MAX_SIZE
        )
        for base in ("/api/v1", "/v1"):
            self.api.router.add_post(f"{base}/images/generations", self.generations)
            self.api.router.add_post(f"{base}/images/edits", self.edits)
            self.api.router.add_get(f"{base}/image-models", self.image_models)
        for path in ("/api/check-balance", "/check-balance"):
            self.api.router.add_post(path, self.check_balance)
        self.api.router.add_route("*", "/capture", self.capture)

        self.storage = StorageHost(fake, api_root, download_root)
        self.download = web.Application(middlewares=[self._track])
        self.download.router.add_get("/files/{file_id}.png", self.storage.download_file)

    async def cancel_handlers(self) -> None:
        """Cancel handlers still sleeping (latency, stalls) so shutdown is prompt."""
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    @web.middleware
    async def _track(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await handler(request)
        finally:
            if task is not None:
                self._tasks.discard(task)

    @web.middleware
    async def _api_errors(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        # Unknown paths and methods answer JSON like the real API, not aiohttp's text.
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < HTTPStatus.BAD_REQUEST:
                raise
            code = "not_found" if exc.status == HTTPStatus.NOT_FOUND else "invalid_request"
            message = f"{request.method} {request.path}: {exc.reason}"
            # A 405 must say which methods the path takes (RFC 9110): keep aiohttp's Allow.
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return json_response(
                self.fake.next_request_id(),
                exc.status,
                openai_error(message, error_type(exc.status), code),
                headers=allow,
            )

    # -- API routes ------------------------------------------------------------------

    def _key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        expected = self.fake.api_key
        return expected is None or hmac.compare_digest(key.encode(), expected.encode())

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _auth_error(self, rid: str, key: str | None, how: str) -> web.Response | None:
        """401 unless ``key`` is accepted: ``missing_api_key`` or ``invalid_api_key``."""
        if self._key_ok(key):
            return None
        if not key:
            message, code = f"Missing API key: send {how}", "missing_api_key"
        else:
            message, code = "Invalid API key", "invalid_api_key"
        return json_response(rid, 401, openai_error(message, "authentication_error", code))

    async def _answer_other_route(
        self, request: web.Request, route: Route
    ) -> tuple[str, web.StreamResponse | None]:
        rid = self.fake.next_request_id()
        fault = self.fake.pop_fault(route)
        if fault is None:
            return rid, None
        response = await fault_answer(self.fake, request, rid, fault)
        if isinstance(response, Dropped):
            self.fake.count(connections_reset=1)
        else:
            self.fake.record_other_status(response.status)
        return rid, response

    async def image_models(self, request: web.Request) -> web.StreamResponse:
        """``GET /image-models[?detailed=true]``: the model catalogue (auth optional)."""
        self.fake.count(model_list_requests=1)
        rid, faulted = await self._answer_other_route(request, "image-models")
        if faulted is not None:
            return faulted
        detailed = request.query.get("detailed", "").lower() in {"1", "true", "yes"}
        body = model_listing(self.fake.price_per_image, detailed=detailed)
        return json_response(rid, 200, body)

    async def check_balance(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/check-balance`` with ``x-api-key``: balances as decimal strings."""
        self.fake.count(balance_requests=1)
        rid, faulted = await self._answer_other_route(request, "check-balance")
        if faulted is not None:
            return faulted
        refused = self._auth_error(rid, request.headers.get("x-api-key"), "'x-api-key: <key>'")
        if refused is not None:
            return refused
        balance = self.fake.snapshot_balance()
        return json_response(
            rid,
            200,
            {
                "usd_balance": f"{balance:.8f}",
                "nano_balance": f"{balance / 1.25:.8f}",
                "nanoDepositAddress": _NANO_ADDRESS,
            },
        )

    async def capture(self, request: web.Request) -> web.StreamResponse:
        """``/capture``: record the request headers (target of the redirect fault)."""
        self.fake.capture_headers(dict(request.headers.items()))
        return json_response(self.fake.next_request_id(), 200, {"captured": True})

    async def generations(self, request: web.Request) -> web.StreamResponse:
        """``POST /images/generations``."""
        return await self._image_route(request, edit=False)

    async def edits(self, request: web.Request) -> web.StreamResponse:
        """``POST /images/edits``: needs an input image; counted and charged as a generation."""
        self.fake.count(edit_requests=1)
        return await self._image_route(request, edit=True)

    async def _image_route(self, request: web.Request, *, edit: bool) -> web.StreamResponse:
        fake = self.fake
        rid = fake.next_request_id()
        fake.enter_generation()
        try:
            response = await self._generate(request, rid, edit=edit)
        finally:
            fake.exit_generation()
        if isinstance(response, Dropped):
            fake.count(connections_reset=1)
        else:
            fake.record_status(response.status)
        return response

    def _request_key(self, request: web.Request, *, edit: bool) -> tuple[str | None, str]:
        """The key sent and how to send one: edits also take ``x-api-key`` (the spec's)."""
        key = self._bearer(request)
        if edit and not key:
            key = request.headers.get("x-api-key")
            return key, "'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        return key, "'Authorization: Bearer <key>'"

    async def _generate(self, request: web.Request, rid: str, *, edit: bool) -> web.StreamResponse:
        fake = self.fake
        fault = fake.pop_fault("edits" if edit else "generations")
        if fault is not None and fault.kind in PRE_PROCESSING_KINDS:
            return await fault_answer(self.fake, request, rid, fault)

        refused = self._auth_error(rid, *self._request_key(request, edit=edit))
        if refused is not None:
            return refused

        wait = fake.take_token()
        if wait is not None:
            return json_response(
                rid,
                429,
                openai_error(
                    "Rate limit exceeded. Please slow down.",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                ),
                headers=_rate_limit_wait(wait, fake.retry_after_granularity),
            )
        cap = fake.admit_daily()
        if cap is not None:
            return daily_cap_answer(self.fake, rid, cap)

        try:
            body = await _read_body(request, edit=edit)
        except ValueError as exc:
            return json_response(
                rid,
                400,
                openai_error(
                    f"The request body is not valid JSON: {exc}",
                    "invalid_request_error",
                    "invalid_json",
                ),
            )
        parsed = validate_generation(body, edit=edit)
        if isinstance(parsed, _Invalid):
            return json_response(
                rid,
                parsed.status,
                openai_error(parsed.message, "invalid_request_error", parsed.code, parsed.param),
            )
        if _CONTENT_POLICY.search(parsed.prompt):
            return json_response(
                rid,
                400,
                openai_error(
                    "Your request was rejected as a result of our safety system.",
                    "invalid_request_error",
                    "content_policy_violation",
                    "prompt",
                ),
            )

        await self._sleep_latency()
        if fake.error_rate > 0 and fake.random() < fake.error_rate:
            status = fake.choice(_SERVER_ERRORS)
            return json_response(
                rid, status, openai_error(f"Upstream error ({status})", "server_error", None)
            )
        if fault is not None and fault.kind == "empty_data":
            return json_response(
                rid,
                200,
                {
                    "created": int(time.time()),
                    "data": [],
                    "cost": 0,
                    "paymentSource": "USD",
                    "remainingBalance": fake.snapshot_balance(),
                },
            )

        charged = fake.charge(parsed.prompt, parsed.n)
        if charged is None:
            required = round(parsed.n * fake.price_per_image, 10)
            return json_response(
                rid,
                402,
                {"error": "Insufficient balance", "status": 402, "requiredBalance": required},
            )
        cost, balance_after = charged
        result: dict[str, Any] = {
            "created": int(time.time()),
            "data": self._items(parsed, rid),
            "cost": cost,
            "paymentSource": "USD",
            "remainingBalance": balance_after,
        }
        if fault is None and fake.reset_rate > 0 and fake.random() < fake.reset_rate:
            fault = Fault.reset_after_charge()
        if fault is not None:
            return await spoiled_answer(request, rid, fault, result)
        return json_response(rid, 200, result)

    async def _sleep_latency(self) -> None:
        fake = self.fake
        delay, jitter = fake.latency, fake.latency_jitter
        if jitter > 0:
            delay += (fake.random() * 2 - 1) * jitter
        if delay > 0:
            await asyncio.sleep(delay)

    def _items(self, parsed: _GenerationRequest, rid: str) -> list[dict[str, str]]:
        fake = self.fake
        items: list[dict[str, str]] = []
        for index in range(parsed.n):
            text = f"nanogpt-fake {rid} #{index} model={parsed.model}: {parsed.prompt}"
            fallback = fake.url_fallback_rate > 0 and fake.random() < fake.url_fallback_rate
            if parsed.response_format == "url" and not fallback:
                file_id, record = fake.store_file(text)
                items.append({"url": self.storage.signed_url(file_id, record)})
            else:
                items.append({"b64_json": Base64Text(make_png_b64(text, fake.image_bytes))})
        return items


def _rate_limit_wait(wait: float, granularity: float) -> dict[str, str]:
    """The headers of a rate limit 429: ``wait`` rounded up to whole ``granularity`` steps.

    At least one step. ``Retry-After`` carries whole seconds, as the real API sends; a step
    other than one second also sends the exact ``retry-after-ms``, which clients prefer.
    """
    seconds = max(1, math.ceil(wait / granularity)) * granularity
    headers = {"Retry-After": str(max(1, math.ceil(seconds)))}
    if granularity != 1.0:
        headers["retry-after-ms"] = str(round(seconds * 1000))
    return headers
