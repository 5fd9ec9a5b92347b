"""nanogpt-async: an asyncio-native client and batch runner for NanoGPT's image API.

Example:
    >>> import nanogpt_async
    >>> async def main() -> None:  # doctest: +SKIP
    ...     async with nanogpt_async.AsyncNanoGPT() as client:
    ...         response = await client.images.generate(prompt="a red fox in snow")
    ...         print(await response.data[0].save("fox"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanogpt_async._batch._plan import BatchPlan
    from nanogpt_async._batch._results import (
        BatchItem,
        BatchProgress,
        BatchSummary,
        ItemResult,
    )
    from nanogpt_async._batch._runner import Batch
    from nanogpt_async._client import AsyncNanoGPT
    from nanogpt_async._errors import (
        APIConnectionError,
        APIError,
        APIResponseValidationError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        ConflictError,
        ContentPolicyViolationError,
        DailyLimitExceededError,
        FolderInUseError,
        GatewayError,
        ImageDownloadError,
        ImageError,
        ImageInputError,
        ImageURLExpiredError,
        InsufficientBalanceError,
        InternalServerError,
        InvalidImageError,
        InvalidInputError,
        LocalRateLimitError,
        NanoGPTError,
        NotFoundError,
        OutputWriteError,
        PayloadTooLargeError,
        PermissionDeniedError,
        PromptFileError,
        RateLimitError,
        RequestTimeoutError,
        UnprocessableEntityError,
    )
    from nanogpt_async._gallery import write_gallery
    from nanogpt_async._http._retry import RetryPolicy
    from nanogpt_async._images import Images
    from nanogpt_async._input._data_urls import (
        MAX_INPUT_IMAGE_BYTES,
        fetch_image_data_url,
        image_data_url,
    )
    from nanogpt_async._input._prompts import read_prompts
    from nanogpt_async._output._responses import (
        Balance,
        GeneratedImage,
        ImageModel,
        ImagesResponse,
        ModelCapabilities,
    )
    from nanogpt_async._pacing import PacerState
    from nanogpt_async._types import NOT_GIVEN, NotGiven

#: The installed version (from the package metadata; pyproject is where it is written).
__version__: str

__all__ = [
    "MAX_INPUT_IMAGE_BYTES",
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncNanoGPT",
    "AuthenticationError",
    "BadRequestError",
    "Balance",
    "Batch",
    "BatchItem",
    "BatchPlan",
    "BatchProgress",
    "BatchSummary",
    "ConflictError",
    "ContentPolicyViolationError",
    "DailyLimitExceededError",
    "FolderInUseError",
    "GatewayError",
    "GeneratedImage",
    "ImageDownloadError",
    "ImageError",
    "ImageInputError",
    "ImageModel",
    "ImageURLExpiredError",
    "Images",
    "ImagesResponse",
    "InsufficientBalanceError",
    "InternalServerError",
    "InvalidImageError",
    "InvalidInputError",
    "ItemResult",
    "LocalRateLimitError",
    "ModelCapabilities",
    "NanoGPTError",
    "NotFoundError",
    "NotGiven",
    "OutputWriteError",
    "PacerState",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PromptFileError",
    "RateLimitError",
    "RequestTimeoutError",
    "RetryPolicy",
    "UnprocessableEntityError",
    "__version__",
    "fetch_image_data_url",
    "image_data_url",
    "read_prompts",
    "write_gallery",
]

# Names are loaded on first use (PEP 562): `import nanogpt_async` stays cheap, which matters
# because the pytest plugin in nanogpt_async.testing is loaded by every test session of every
# project that has this package installed.
_HOME = {
    "APIConnectionError": "nanogpt_async._errors",
    "APIError": "nanogpt_async._errors",
    "APIResponseValidationError": "nanogpt_async._errors",
    "APIStatusError": "nanogpt_async._errors",
    "APITimeoutError": "nanogpt_async._errors",
    "AsyncNanoGPT": "nanogpt_async._client",
    "AuthenticationError": "nanogpt_async._errors",
    "BadRequestError": "nanogpt_async._errors",
    "Balance": "nanogpt_async._output._responses",
    "Batch": "nanogpt_async._batch._runner",
    "BatchItem": "nanogpt_async._batch._results",
    "BatchPlan": "nanogpt_async._batch._plan",
    "BatchProgress": "nanogpt_async._batch._results",
    "BatchSummary": "nanogpt_async._batch._results",
    "ConflictError": "nanogpt_async._errors",
    "ContentPolicyViolationError": "nanogpt_async._errors",
    "DailyLimitExceededError": "nanogpt_async._errors",
    "GatewayError": "nanogpt_async._errors",
    "GeneratedImage": "nanogpt_async._output._responses",
    "ImageDownloadError": "nanogpt_async._errors",
    "ImageError": "nanogpt_async._errors",
    "ImageInputError": "nanogpt_async._errors",
    "ImageModel": "nanogpt_async._output._responses",
    "ImageURLExpiredError": "nanogpt_async._errors",
    "Images": "nanogpt_async._images",
    "ImagesResponse": "nanogpt_async._output._responses",
    "InsufficientBalanceError": "nanogpt_async._errors",
    "InternalServerError": "nanogpt_async._errors",
    "InvalidImageError": "nanogpt_async._errors",
    "InvalidInputError": "nanogpt_async._errors",
    "ItemResult": "nanogpt_async._batch._results",
    "LocalRateLimitError": "nanogpt_async._errors",
    "MAX_INPUT_IMAGE_BYTES": "nanogpt_async._input._data_urls",
    "ModelCapabilities": "nanogpt_async._output._responses",
    "NOT_GIVEN": "nanogpt_async._types",
    "NanoGPTError": "nanogpt_async._errors",
    "NotFoundError": "nanogpt_async._errors",
    "NotGiven": "nanogpt_async._types",
    "FolderInUseError": "nanogpt_async._errors",
    "OutputWriteError": "nanogpt_async._errors",
    "PacerState": "nanogpt_async._pacing",
    "PayloadTooLargeError": "nanogpt_async._errors",
    "PermissionDeniedError": "nanogpt_async._errors",
    "PromptFileError": "nanogpt_async._errors",
    "RateLimitError": "nanogpt_async._errors",
    "RequestTimeoutError": "nanogpt_async._errors",
    "RetryPolicy": "nanogpt_async._http._retry",
    "UnprocessableEntityError": "nanogpt_async._errors",
    "fetch_image_data_url": "nanogpt_async._input._data_urls",
    "image_data_url": "nanogpt_async._input._data_urls",
    "read_prompts": "nanogpt_async._input._prompts",
    "write_gallery": "nanogpt_async._gallery",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # Read on first use: importlib.metadata costs more than importing this package.
        from nanogpt_async._version import package_version

        globals()[name] = package_version()
        return globals()[name]
    try:
        home = _HOME[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(home), name)
    # Users see nanogpt_async.X in reprs and tracebacks, not the private module it lives in.
    if getattr(value, "__module__", "").startswith("nanogpt_async._"):
        value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
