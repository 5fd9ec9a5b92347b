"""The batch's only way to the API: its sends, its pace, its Redis and the models list.

Every other stage talks to `BatchApi`, never to the client: it wraps the client's `Channel`
(``_http/_channel``), the same one ``client.images`` sends through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nanogpt_async._output._calls import EDITS, GENERATIONS, image_models, images_call
from nanogpt_async._pacing._redis import RedisBackend
from nanogpt_async._types import NotGiven

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from nanogpt_async._http._channel import Channel
    from nanogpt_async._output._responses import ImageModel, ImagesResponse
    from nanogpt_async._pacing import Pacer
    from nanogpt_async._pacing._hooks import TurnHooks

__all__ = ["BatchApi"]


class BatchApi:
    """The channel as the batch uses it (with a pacer of its own when given its own pace)."""

    __slots__ = ("_channel", "paced", "retry_ambiguous")

    def __init__(
        self, channel: Channel, *, rps: float | NotGiven | None, burst: int | None
    ) -> None:
        if not isinstance(rps, NotGiven) or burst is not None:
            # An explicit pace for this batch alone: a pacer of its own (see generate_many).
            own_rps = channel.pacer.state.max_rate if isinstance(rps, NotGiven) else rps
            channel = channel.with_own_pacer(rps=own_rps, burst=burst or 1)
        self._channel = channel
        #: Turns are paced (a rate limit is set): a 429 is the pacer's business.
        self.paced = channel.pacer.state.max_rate is not None
        #: Take over items another run left uncertain (``RetryPolicy(retry_ambiguous=True)``).
        self.retry_ambiguous = channel.retry_policy.retry_ambiguous

    def send(
        self, body: dict[str, Any], *, edit: bool, hooks: TurnHooks
    ) -> Coroutine[Any, Any, ImagesResponse]:
        """Send a built body (retried by the channel, turns taken through ``hooks``).

        The channel's own coroutine, not one wrapping it: one frame less for every resumption
        of the request on the per-item path.
        """
        return images_call(self._channel, EDITS if edit else GENERATIONS, body, hooks=hooks)

    async def models(self) -> list[ImageModel]:
        """The image-models list with its pricing (one free ``GET``)."""
        return await image_models(self._channel)

    def pacer(self) -> Pacer:
        """The pacer the batch's turns come from (the client's, or the batch's own)."""
        return self._channel.pacer

    def redis(self) -> tuple[str, str] | None:
        """``(url, key)`` of the client's Redis (``limits_url``), if any; the key is only hashed."""
        backend = self._channel.pacer.backend
        if not isinstance(backend, RedisBackend):
            return None
        return backend.url, self._channel.api_key
