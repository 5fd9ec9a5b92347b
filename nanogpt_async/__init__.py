"""nanogpt-async: an asyncio-native client and batch runner for NanoGPT's image API.

Example:
    >>> import nanogpt_async
    >>> async def main() -> None:  # doctest: +SKIP
    ...     async with nanogpt_async.AsyncNanoGPT() as client:
    ...         response = await client.images.generate(prompt="a red fox in snow")
    ...         print(await response.data[0].save("fox"))
"""

from __future__ import annotations

import contextlib

from nanogpt_async._batch import Batch
from nanogpt_async._batch_models import (
    BatchItem,
    BatchProgress,
    BatchSummary,
    ItemResult,
    OutputWriteError,
)
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
    ImageDownloadError,
    ImageError,
    ImageInputError,
    ImageURLExpiredError,
    InsufficientBalanceError,
    InternalServerError,
    InvalidImageError,
    InvalidInputError,
    NanoGPTError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    UnprocessableEntityError,
)
from nanogpt_async._images import Images
from nanogpt_async._inputs import (
    MAX_INPUT_IMAGE_BYTES,
    fetch_image_data_url,
    image_data_url,
)
from nanogpt_async._models import (
    Balance,
    GeneratedImage,
    ImageModel,
    ImagesResponse,
    ModelCapabilities,
)
from nanogpt_async._prompts import PromptFileError, read_prompts
from nanogpt_async._retry import RetryPolicy
from nanogpt_async._types import NOT_GIVEN, NotGiven

__version__ = "0.1.0"

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
    "BatchProgress",
    "BatchSummary",
    "ConflictError",
    "ContentPolicyViolationError",
    "DailyLimitExceededError",
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
    "ModelCapabilities",
    "NanoGPTError",
    "NotFoundError",
    "NotGiven",
    "OutputWriteError",
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
]

# Users see nanogpt_async.X in reprs and tracebacks, not the private module it lives in.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("nanogpt_async._"):
        with contextlib.suppress(AttributeError, TypeError):  # constants have no __module__
            _obj.__module__ = __name__
del _name, _obj, contextlib
