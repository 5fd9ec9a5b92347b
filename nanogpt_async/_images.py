"""The ``client.images`` resource: generate, edit, and the image-model catalogue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from os import PathLike
from typing import TYPE_CHECKING, Any

from nanogpt_async._http._channel import Channel
from nanogpt_async._input._body import build_edit_body, build_generation_body, fields_of
from nanogpt_async._output._calls import EDITS, GENERATIONS, image_models, images_call
from nanogpt_async._output._responses import ImageModel, ImagesResponse
from nanogpt_async._types import NOT_GIVEN, ImageInput, NotGiven, ResponseFormat, TimeoutTypes

if TYPE_CHECKING:
    from nanogpt_async._batch._results import BatchProgress
    from nanogpt_async._batch._runner import Batch, BatchInput
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._pacing import TurnHooks

__all__ = ["Images"]


class Images:
    """Image generation and edit calls; reach it as ``client.images``."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def generate(
        self,
        *,
        prompt: str,
        model: str | None = None,
        n: int | None = None,
        size: str | None = None,
        response_format: ResponseFormat | None = None,
        user: str | None = None,
        image: ImageInput | None = None,
        images: Sequence[ImageInput] | None = None,
        mask: ImageInput | None = None,
        strength: float | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        seed: int | None = None,
        kontext_max_mode: bool | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ImagesResponse:
        """Generate images (``POST /images/generations``); one call, one charge.

        Arguments left as ``None`` are not sent, so NanoGPT's defaults apply (model
        ``hidream``, ``n=1``, ``b64_json``). Input images (``image``, ``images``, ``mask``) may
        be paths, bytes or data URLs; they are checked (type from the bytes, 4 MB at most)
        before anything is sent.

        Args:
            prompt: What to draw.
            model: Model id (see [models][nanogpt_async.Images.models]).
            n: Images per request (the model's ``max_images`` at most).
            size: Model-specific size such as ``"1024x1024"`` or ``"auto"``.
            response_format: ``"b64_json"`` or ``"url"`` (signed, expires in about an hour).
            user: Your end user's id.
            image: One input image for image-to-image (``imageDataUrl``).
            images: Several input images (``imageDataUrls``) for models that take them.
            mask: Inpainting mask, white where to edit (``maskDataUrl``).
            strength: 0..1, how far from the input image to go.
            guidance_scale: 0..20, how closely to follow the prompt.
            num_inference_steps: 1..100 denoising steps.
            seed: Seed, where the model supports one.
            kontext_max_mode: flux-kontext's enhanced context mode.
            extra_body: More JSON fields, sent as given (for fields this library predates).
            timeout: This call's timeout (seconds, ``httpx.Timeout``, or ``None`` for none).
                Default: `client.timeout`, the client's.

        Returns:
            The typed response; ``await response.data[0].read()`` gives the bytes.

        Raises:
            InvalidInputError: a bad argument (nothing sent, nothing charged).
            APIStatusError: NanoGPT refused (a subclass per status, see the error tree).
            APIConnectionError: no usable answer after retries.
        """
        body = await build_generation_body(fields_of(locals()))
        return await self.generate_from_body(body, timeout=timeout)

    async def generate_from_body(
        self,
        body: dict[str, Any],
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        hooks: TurnHooks | None = None,
    ) -> ImagesResponse:
        """Send an already built and checked JSON body (the batch runner's entry point).

        Every attempt takes its turn from the client's pacer.

        Args:
            body: The JSON body, checked and with input images as data URLs.
            timeout: This call's timeout (seconds, ``httpx.Timeout``, or ``None`` for none).
                Default: `client.timeout`, the client's.
            hooks: Decide when each attempt takes its turn (the batch runner waits inside a
                scope it can cancel) and are told each outcome.
        """
        return await images_call(self._channel, GENERATIONS, body, timeout=timeout, hooks=hooks)

    async def edit(
        self,
        *,
        prompt: str,
        image: ImageInput | None = None,
        images: Sequence[ImageInput] | None = None,
        mask: ImageInput | None = None,
        model: str | None = None,
        n: int | None = None,
        size: str | None = None,
        response_format: ResponseFormat | None = None,
        user: str | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ImagesResponse:
        """Edit an image (``POST /images/edits``); one call, one charge.

        The input image (``image``, or several as ``images``) and the optional ``mask`` may be
        paths, bytes or data URLs; they are checked (type from the bytes, at most 4 MB as a
        data URL) before anything is sent. The answer has the same shape as
        [generate][nanogpt_async.Images.generate]'s, and the same retry and money policy
        applies: a request that may have reached the server is not retried unless the retry
        policy says so. Check the model's ``capabilities`` in
        [models][nanogpt_async.Images.models] (``image_to_image``, ``inpainting``); an
        inpainting model such as ``flux-lora/inpainting`` needs a mask.

        Args:
            prompt: What to change.
            image: The image to edit (``imageDataUrl``).
            images: Several input images (``imageDataUrls``) for models that take them.
            mask: White where to edit (``maskDataUrl``).
            model: Model id; pass one that takes input images (the server default may not).
            n: Images per request (the model's ``max_images`` at most).
            size: Model-specific size such as ``"1024x1024"`` or ``"auto"``.
            response_format: ``"b64_json"`` or ``"url"``.
            user: Your end user's id.
            extra_body: More JSON fields, sent as given.
            timeout: This call's timeout (seconds, ``httpx.Timeout``, or ``None`` for none).
                Default: `client.timeout`, the client's.

        Returns:
            The typed response; ``await response.data[0].save("edited")`` writes the file.

        Raises:
            InvalidInputError: a bad argument or no input image (nothing sent, nothing charged).
            APIStatusError: NanoGPT refused (a subclass per status, see the error tree).
            APIConnectionError: no usable answer after retries.

        Example:
            >>> edited = await client.images.edit(  # doctest: +SKIP
            ...     prompt="make it snow", image="street.jpg", model="flux-kontext"
            ... )
        """
        body = await build_edit_body(fields_of(locals()))
        return await self.edit_from_body(body, timeout=timeout)

    async def edit_from_body(
        self,
        body: dict[str, Any],
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        hooks: TurnHooks | None = None,
    ) -> ImagesResponse:
        """Send an already built and checked edit body (the batch runner's entry point).

        Args:
            body: The JSON body, checked and with input images as data URLs.
            timeout: This call's timeout (seconds, ``httpx.Timeout``, or ``None`` for none).
                Default: `client.timeout`, the client's.
            hooks: Decide when each attempt takes its turn from the client's pacer (retries
                included) and are told each outcome.
        """
        return await images_call(self._channel, EDITS, body, timeout=timeout, hooks=hooks)

    def generate_many(
        self,
        items: BatchInput,
        *,
        output_dir: str | PathLike[str] | None = None,
        concurrency: int = 64,
        rps: float | NotGiven | None = NOT_GIVEN,
        burst: int | None = None,
        download_concurrency: int = 32,
        max_cost: float | Decimal | None = None,
        shared_budget: str | None = None,
        retry_failed: bool = True,
        skipped_results: bool = True,
        on_progress: Callable[[BatchProgress], object] | None = None,
        progress_interval: float = 0.5,
        manifest_name: str = "manifest.jsonl",
        total: int | None = None,
        shard: tuple[int, int] | Shard | None = None,
        job_id: str | None = None,
        fence_lease: float | None = None,
        **defaults: Any,
    ) -> Batch:
        """Generate many images at the account's pace: a [Batch][nanogpt_async.Batch].

        Nothing runs until you enter it (``async with batch:`` then ``async for result in
        batch``) or await ``batch.run()``. See the "Batch generation" guide for resume, budget
        and pacing semantics.

        Args:
            items: Prompts (``str``), [BatchItem][nanogpt_async.BatchItem]s, or dicts with
                ``prompt`` and optionally ``id`` and any ``generate()`` field; an iterable or
                async iterable, read lazily. An item with ``"operation": "edit"`` (and an
                ``image``/``images``, optionally a ``mask``) is sent to the edits endpoint,
                like [edit][nanogpt_async.Images.edit].
            output_dir: Write files and ``manifest.jsonl`` here (and resume from it); ``None``
                keeps the images in memory (``ItemResult.images``).
            concurrency: Most generations in flight (lowered temporarily after 429s); at most
                the client's ``max_connections``.
            rps: Leave it out: the batch takes its turns from the client's pacer
                (``AsyncNanoGPT(rps=...)``, 25 by default), shared with every other call the
                client makes, and with other processes through ``limits_url``. Given, this
                batch gets a pacer of its own at that rate (``None``: unpaced), in this
                process only, separate from the client's: for tests and isolated tools.
                Default: `the client's pacer`.
            burst: Like ``rps`` (a pacer of its own): requests that may go at once after a
                quiet spell.
            download_concurrency: Most downloads/decodes/writes at once.
            max_cost: USD budget: no new request once spent plus in-flight estimate would pass
                it.
            shared_budget: A name: ``max_cost`` is then one cap shared through the client's
                ``limits_url`` (Redis) by every batch that uses this name with this key, in
                any process (see "Sharing one key"). It fails closed: no paid request is sent
                while Redis cannot be checked. Needs asyncio (redis-py's async client).
            retry_failed: On resume, retry items recorded as failed (else skip them).
            skipped_results: On resume, hand out a ``skipped`` result for each item an earlier
                run did (``False``: only count them, in the summary and the progress, and
                iterate over the ok and failed ones alone). A re-run over a million recorded
                items is faster without them: they are skipped without reading their records.
            on_progress: Called with a [BatchProgress][nanogpt_async.BatchProgress] at most every
                ``progress_interval`` seconds, and once at the end.
            progress_interval: Seconds between progress calls.
            manifest_name: File name of the manifest inside ``output_dir``.
            total: The number of items, for progress, when ``items`` has no ``len()``
                (all of them: with ``shard``, this shard's share is worked out).
            shard: ``(index, count)``: do only the items whose input index (from 0) is
                ``index`` modulo ``count``, recording them in
                ``manifest.shard-IIII-of-NNNN.jsonl`` under a lock of their own, so the
                shards of one job may share ``output_dir`` (see "Shards across machines").
                With the client's ``limits_url`` (Redis) each item is also claimed in Redis
                before its paid request (an at-most-once fence): an item another process
                finished is skipped, one it holds is left to it, and one whose process died
                before recording it is recorded as uncertain (may have been charged) and
                skipped, unless the client's ``RetryPolicy(retry_ambiguous=True)``.
            job_id: Names the job in the fence (default: the output folder's absolute path);
                give the same one to every shard when they write to different folders.
                Given without ``shard``, a single process is fenced too. The fence needs
                asyncio (redis-py's async client).
            fence_lease: Seconds a killed process's claims stay its own (its heartbeat
                renews them every third of that); then they read as uncertain. Default: 30.
            **defaults: ``generate()`` fields for every item that does not set them
                (``model=``, ``size=``, ``n=``, ``response_format=``...).

        Raises:
            InvalidInputError: a bad argument or default (nothing is sent); when the batch
                starts under trio, a shared budget or an item fence (nothing is sent).

        Example:
            >>> summary = await client.images.generate_many(  # doctest: +SKIP
            ...     ["a red fox", "a blue jay"], output_dir="out", model="hidream"
            ... ).run()
        """
        from nanogpt_async._batch._fence import DEFAULT_LEASE
        from nanogpt_async._batch._runner import Batch

        return Batch(
            self._channel,
            items,
            output_dir=output_dir,
            concurrency=concurrency,
            rps=rps,
            burst=burst,
            download_concurrency=download_concurrency,
            max_cost=max_cost,
            shared_budget=shared_budget,
            retry_failed=retry_failed,
            skipped_results=skipped_results,
            on_progress=on_progress,
            progress_interval=progress_interval,
            manifest_name=manifest_name,
            total=total,
            defaults=defaults,
            shard=shard,
            job_id=job_id,
            fence_lease=fence_lease if fence_lease is not None else DEFAULT_LEASE,
        )

    async def models(self, *, detailed: bool = True) -> list[ImageModel]:
        """The image-model catalogue: ids, price per size, capabilities, sizes, max images."""
        # Not paced: a rare, free call, which must still work while a daily cap blocks.
        return await image_models(self._channel, detailed=detailed)
