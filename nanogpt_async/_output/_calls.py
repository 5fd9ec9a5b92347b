"""The API's image calls as typed responses: what ``client.images`` and the batch both send.

Each one sends through a `Channel` (pacing, retries, the bounded exchange) and types the answer;
the images in a response download through that same channel.
"""

from __future__ import annotations

from typing import Any

from nanogpt_async._http._channel import Channel
from nanogpt_async._output._responses import ImageModel, ImagesResponse
from nanogpt_async._pacing import TurnHooks
from nanogpt_async._types import NOT_GIVEN, NotGiven, TimeoutTypes

__all__ = ["EDITS", "GENERATIONS", "IMAGE_MODELS", "image_models", "images_call"]

GENERATIONS = "/images/generations"
EDITS = "/images/edits"
IMAGE_MODELS = "/image-models"


async def images_call(
    channel: Channel,
    path: str,
    body: dict[str, Any],
    *,
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    hooks: TurnHooks | None = None,
) -> ImagesResponse:
    """Send a checked generation or edit body (``path``: `GENERATIONS` or `EDITS`); one charge.

    Never retried once it may have reached the server, unless the retry policy says so.
    """

    def parse(payload: Any, request_id: str | None) -> ImagesResponse:
        return ImagesResponse.from_api(
            payload, request_id=request_id, downloader=channel, requested=body.get("n")
        )

    return await channel.call(
        "POST",
        channel.url(path),
        parse=parse,
        json_body=body,
        idempotent=False,
        hooks=hooks,
        timeout=timeout,
    )


async def image_models(channel: Channel, *, detailed: bool = True) -> list[ImageModel]:
    """The image-model catalogue (free; not paced, so it works while a daily cap blocks)."""
    url = channel.url(IMAGE_MODELS) + ("?detailed=true" if detailed else "")
    return await channel.call("GET", url, parse=_models, idempotent=True, paced=False)


def _models(payload: Any, _request_id: str | None) -> list[ImageModel]:
    items = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        return []
    return [ImageModel.from_api(item) for item in items if isinstance(item, dict)]
