"""Building the JSON body of ``POST /images/generations``, checked before anything is sent.

Python names follow the OpenAI SDK (``image``, ``images``, ``mask``); the JSON names follow
NanoGPT (``imageDataUrl``, ``imageDataUrls``, ``maskDataUrl``). Unset fields are omitted so the
server's defaults apply, and every body validates against NanoGPT's
``OpenAIImageGenerationsRequest`` schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nanogpt_async._errors import InvalidInputError
from nanogpt_async._inputs import image_data_url_async
from nanogpt_async._types import ImageInput

__all__ = ["GENERATE_FIELDS", "build_generation_body", "check_generation_fields"]

#: ``generate()`` keyword -> JSON field, for every plain (non-image) field.
GENERATE_FIELDS: Mapping[str, str] = {
    "prompt": "prompt",
    "model": "model",
    "n": "n",
    "size": "size",
    "response_format": "response_format",
    "user": "user",
    "strength": "strength",
    "guidance_scale": "guidance_scale",
    "num_inference_steps": "num_inference_steps",
    "seed": "seed",
    "kontext_max_mode": "kontext_max_mode",
}
#: Keywords whose values are input images.
IMAGE_FIELDS = ("image", "images", "mask")


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidInputError(f"{name} must be a number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be from {low} to {high}, got {value!r}")
    return value


def _integer(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InvalidInputError(f"{name} must be {bounds}, got {value!r}")
    return value


def _string(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _response_format(name: str, value: object) -> str:
    if value not in ("url", "b64_json"):
        raise InvalidInputError(f"{name} must be 'url' or 'b64_json', got {value!r}")
    return str(value)


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return value


#: Python name -> check returning the value to send. Bounds are the vendor schema's.
_CHECKS: Mapping[str, Callable[[str, Any], Any]] = {
    "prompt": _string,
    "model": _string,
    "size": _string,
    "user": _string,
    "n": lambda name, value: _integer(name, value, 1),
    "response_format": _response_format,
    "strength": lambda name, value: _number(name, value, 0.0, 1.0),
    "guidance_scale": lambda name, value: _number(name, value, 0.0, 20.0),
    "num_inference_steps": lambda name, value: _integer(name, value, 1, 100),
    "seed": lambda name, value: _integer(name, value, -(2**63)),
    "kontext_max_mode": _boolean,
}


def check_generation_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the plain fields (by Python name) and return them by JSON name, unset omitted.

    Raises:
        InvalidInputError: a value NanoGPT would refuse, or an unknown field name.
    """
    unknown = set(fields) - set(GENERATE_FIELDS) - set(IMAGE_FIELDS) - {"extra_body"}
    if unknown:
        raise InvalidInputError(
            f"unknown request field(s) {sorted(unknown)}; known: "
            f"{sorted([*GENERATE_FIELDS, *IMAGE_FIELDS, 'extra_body'])} (put undocumented "
            "fields in extra_body)"
        )
    body: dict[str, Any] = {"prompt": _string("prompt", fields.get("prompt"))}
    for name, value in fields.items():
        if value is not None and name in _CHECKS:
            body[GENERATE_FIELDS[name]] = _CHECKS[name](name, value)
    extra = fields.get("extra_body")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise InvalidInputError(f"extra_body must be a dict, got {type(extra).__name__}")
        body.update(extra)
    return body


async def build_generation_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The full JSON body: `check_generation_fields` plus input images as data URLs.

    File reads and base64 encoding of large input images run in worker threads.
    """
    body = check_generation_fields(fields)
    image: ImageInput | None = fields.get("image")
    images: Sequence[ImageInput] | None = fields.get("images")
    mask: ImageInput | None = fields.get("mask")
    if images is not None and (
        isinstance(images, (str, bytes)) or not isinstance(images, Sequence)
    ):
        raise InvalidInputError(
            "images must be a list of paths, bytes or data URLs; for one image use image="
        )
    # One at a time: inputs are few, and a task group would wrap the first error in a group.
    if image is not None:
        body["imageDataUrl"] = await image_data_url_async(image, "image")
    if images is not None:
        body["imageDataUrls"] = [
            await image_data_url_async(item, f"images[{index}]")
            for index, item in enumerate(images)
        ]
    if mask is not None:
        body["maskDataUrl"] = await image_data_url_async(mask, "mask")
    return body
