"""The batch's only way to the client: its sends, its pace, its Redis and the models list.

Every other stage talks to `BatchApi`, never to the client, so how the batch reaches the API
(today: the client's ``*_from_body`` entry points and three of its internals) changes here
alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nanogpt_async._pacing._redis import RedisBackend
from nanogpt_async._types import NotGiven

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from nanogpt_async._client import AsyncNanoGPT
    from nanogpt_async._output._responses import ImageModel, ImagesResponse
    from nanogpt_async._pacing._hooks import TurnHooks

__all__ = ["BatchApi"]


class BatchApi:
    """The client as the batch uses it (with a pacer of its own when given its own pace)."""

    __slots__ = ("_client", "paced", "retry_ambiguous")

    def __init__(
        self, client: AsyncNanoGPT, *, rps: float | NotGiven | None, burst: int | None
    ) -> None:
        if not isinstance(rps, NotGiven) or burst is not None:
            # An explicit pace for this batch alone: a pacer of its own (see generate_many).
            own_rps = client.pacing.max_rate if isinstance(rps, NotGiven) else rps
            client = client._with_own_pacer(rps=own_rps, burst=burst or 1)  # noqa: SLF001
        self._client = client
        #: Turns are paced (a rate limit is set): a 429 is the pacer's business.
        self.paced = client.pacing.max_rate is not None
        #: Take over items another run left uncertain (``RetryPolicy(retry_ambiguous=True)``).
        self.retry_ambiguous = client.retry_policy.retry_ambiguous

    def send(
        self, body: dict[str, Any], *, edit: bool, hooks: TurnHooks
    ) -> Coroutine[Any, Any, ImagesResponse]:
        """Send a built body (retried by the client, turns taken through ``hooks``).

        The client's own coroutine, not one wrapping it: one frame less for every resumption
        of the request on the per-item path.
        """
        images = self._client.images
        if edit:
            return images.edit_from_body(body, hooks=hooks)
        return images.generate_from_body(body, hooks=hooks)

    async def models(self) -> list[ImageModel]:
        """The image-models list with its pricing (one free ``GET``)."""
        return await self._client.images.models()

    def redis(self) -> tuple[str, str] | None:
        """``(url, key)`` of the client's Redis (``limits_url``), if any; the key is only hashed."""
        backend = self._client._pacer.backend  # noqa: SLF001 - the client's own pacer
        if not isinstance(backend, RedisBackend):
            return None
        return backend.url, self._client._api_key  # noqa: SLF001 - hashed into key names
