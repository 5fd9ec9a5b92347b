"""Building the JSON bodies of ``POST /images/generations`` and ``/images/edits``, checked first.

Python names follow the OpenAI SDK (``image``, ``images``, ``mask``); the JSON names follow
NanoGPT (``imageDataUrl``, ``imageDataUrls``, ``maskDataUrl``). Unset fields are omitted so the
server's defaults apply, and every body validates against NanoGPT's schemas for its path
(``tests/test_conformance.py`` checks it for every combination of fields).

Whole-number floats (``n=2.0``, ``seed=42.0``) are accepted for integer fields, as JSON Schema's
``integer`` accepts them, and sent as JSON integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from nanogpt_async._errors import InvalidInputError
from nanogpt_async._input._data_urls import image_data_url_async
from nanogpt_async._input._numbers import whole_number
from nanogpt_async._types import ImageInput

__all__ = [
    "EDIT_FIELDS",
    "GENERATE_FIELDS",
    "IMAGE_FIELDS",
    "ITEM_FIELDS",
    "Operation",
    "build_edit_body",
    "build_generation_body",
    "build_item_body",
    "build_item_body_now",
    "check_generation_fields",
    "fields_of",
]

#: Which endpoint a batch item goes to: ``POST /images/generations`` or ``/images/edits``.
Operation = Literal["generate", "edit"]

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
#: ``edit()`` keyword -> JSON field. The edits schema names prompt, model, size and n;
#: response_format and user are the OpenAI-compatible delivery fields (the schema allows more
#: properties, and the answer is the generations one). Other fields go in ``extra_body``.
EDIT_FIELDS: Mapping[str, str] = {
    name: GENERATE_FIELDS[name]
    for name in ("prompt", "model", "n", "size", "response_format", "user")
}
#: Keywords whose values are input images.
IMAGE_FIELDS = ("image", "images", "mask")
#: Every key a batch item (a dict, a JSONL line, a CSV row) may carry besides ``id``.
ITEM_FIELDS = frozenset({*GENERATE_FIELDS, *IMAGE_FIELDS, "extra_body", "operation"})
_OPERATIONS: tuple[Operation, ...] = ("generate", "edit")
#: A public call's arguments that are not request fields (see `fields_of`).
_NOT_FIELDS = frozenset({"self", "timeout"})
# What orjson (and NanoGPT's 64-bit seeds) can carry: a bigger int is refused here, not by a
# TypeError from the JSON encoder.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# extra_body is user data sent as JSON: deeper than this is a mistake (and a server's 400).
_MAX_JSON_DEPTH = 64


def _number(name: str, value: object, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise InvalidInputError(f"{name} must be a number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be from {low} to {high}, got {value!r}")
    return value


def _integer(name: str, value: object, low: int, high: int | None = None) -> int:
    # 2.0 is the integer 2 (JSON Schema agrees), sent as 2.
    checked = whole_number(name, value, low=low, high=high, whole_floats=True)
    if checked > _INT_MAX:
        raise InvalidInputError(
            f"{name} must be from {low} to {_INT_MAX} (a 64-bit integer), got {checked!r}"
        )
    return checked


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
    "seed": lambda name, value: _integer(name, value, _INT_MIN),
    "kontext_max_mode": _boolean,
}


def _check_json(value: object, where: str, depth: int = 0) -> None:
    """Refuse what cannot be sent as JSON: NaN, infinities, huge ints, odd types, deep nests."""
    if depth > _MAX_JSON_DEPTH:
        raise InvalidInputError(f"{where} is nested more than {_MAX_JSON_DEPTH} levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"{where} keys must be strings, got {key!r}")
            _check_json(item, f"{where}[{key!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    else:
        _check_json_scalar(value, where)


def _check_json_scalar(value: object, where: str) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidInputError(f"{where} must fit in 64 bits, got {value!r}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where} must be a finite number (JSON has no {value!r})")
    else:
        raise InvalidInputError(
            f"{where} must be JSON data (str, int, float, bool, None, list, dict), "
            f"got {type(value).__name__}"
        )


def fields_of(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A public call's arguments (its ``locals()``, taken first thing) as request fields.

    ``generate()`` and ``edit()`` name their fields once, in their signatures: a dict spelling
    them out again could drift from them. What is not a field (``self``, ``timeout``) is left
    out; any other name `check_generation_fields` does not know is refused there, so a new
    parameter cannot slip into a body unchecked.
    """
    return {name: value for name, value in arguments.items() if name not in _NOT_FIELDS}


def _operation(fields: Mapping[str, Any]) -> Operation:
    value = fields.get("operation")
    if value is None or value == "generate":
        return "generate"
    if value == "edit":
        return "edit"
    raise InvalidInputError(f"operation must be one of {list(_OPERATIONS)}, got {value!r}")


def check_generation_fields(
    fields: Mapping[str, Any], *, operation: Operation | None = None
) -> dict[str, Any]:
    """Validate the plain fields (by Python name) and return them by JSON name, unset omitted.

    ``operation`` (default: the ``"operation"`` field, else ``"generate"``) says which endpoint
    the body is for; an edit takes fewer fields (`EDIT_FIELDS`).

    Raises:
        InvalidInputError: a value NanoGPT would refuse, or an unknown field name.
    """
    if not ITEM_FIELDS.issuperset(fields):
        unknown = set(fields) - ITEM_FIELDS
        raise InvalidInputError(
            f"unknown request field(s) {sorted(unknown)}; known: "
            f"{sorted(ITEM_FIELDS)} (put undocumented fields in extra_body)"
        )
    operation = operation or _operation(fields)
    if operation == "edit":
        others = sorted(
            name
            for name, value in fields.items()
            if value is not None and name in GENERATE_FIELDS and name not in EDIT_FIELDS
        )
        if others:
            raise InvalidInputError(
                f"{others} are not fields of an image edit (it takes {sorted(EDIT_FIELDS)} and "
                "image/images/mask); for image-to-image with them use generate() with image=, "
                "or send them in extra_body"
            )
    body: dict[str, Any] = {"prompt": _string("prompt", fields.get("prompt"))}
    for name, value in fields.items():
        if value is not None and name in _CHECKS and name != "prompt":
            body[GENERATE_FIELDS[name]] = _CHECKS[name](name, value)
    extra = fields.get("extra_body")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise InvalidInputError(f"extra_body must be a dict, got {type(extra).__name__}")
        _check_json(extra, "extra_body")
        body.update(extra)
    return body


async def _add_images(body: dict[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Add the input images of ``fields`` to ``body`` as data URLs (big ones in a thread)."""
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


async def build_generation_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The full generations body: `check_generation_fields` plus input images.

    File reads and base64 encoding of large input images run in worker threads.
    """
    return await _add_images(check_generation_fields(fields, operation="generate"), fields)


async def build_edit_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The full edits body: the edit fields plus the input image(s) and optional mask.

    Raises:
        InvalidInputError: no input image (an edit needs ``image`` or ``images``), or a field
            an edit does not take.
    """
    body = check_generation_fields(fields, operation="edit")
    images = fields.get("images")
    if fields.get("image") is None and (
        images is None or (isinstance(images, Sequence) and not images)
    ):
        raise InvalidInputError(
            "an image edit needs the image to edit: pass image= (a path, bytes or a data URL) "
            "or images=[...]"
        )
    return await _add_images(body, fields)


def build_item_body_now(fields: Mapping[str, Any]) -> tuple[Operation, dict[str, Any]] | None:
    """`build_item_body` for an item with no input image to read: at once, without awaiting.

    ``None`` for an item naming an input image or an edit (which needs one): build those with
    `build_item_body`, which reads and encodes images in worker threads. A resume triages
    thousands of items in one worker-thread call through this.
    """
    if fields.get("image") is not None or fields.get("images") is not None:
        return None
    if fields.get("mask") is not None:
        return None
    operation = _operation(fields)
    if operation == "edit":
        return None
    return operation, check_generation_fields(fields, operation="generate")


async def build_item_body(fields: Mapping[str, Any]) -> tuple[Operation, dict[str, Any]]:
    """A batch item's ``(operation, body)``: ``"operation": "edit"`` makes it an edit."""
    operation = _operation(fields)
    if operation == "edit":
        return operation, await build_edit_body(fields)
    return operation, await build_generation_body(fields)
