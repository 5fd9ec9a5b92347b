"""The fake's image-model catalogue: one table for ``GET /image-models`` and for its rules.

The fake refuses what this table, as listed by ``/image-models``, says a model cannot do, so
what a client reads from the catalogue and what the fake enforces cannot drift apart:

* ``size`` must be one of the model's ``supported_parameters.resolutions``;
* ``n`` must be at most ``max_images`` (a model with ``fixed_image_count`` always returns that
  many images, and is charged for them);
* input images (``imageDataUrl``, ``imageDataUrls``) need ``capabilities.image_to_image``, a mask
  (``maskDataUrl``) needs ``capabilities.inpainting`` and an input image to apply to;
* a model without ``capabilities.image_generation`` cannot draw from text alone: it needs an
  input image, and an inpainting-only model (``flux-lora/inpainting``) needs the mask as well,
  as NanoGPT's guide says;
* an edit (``POST /images/edits``) needs an input image.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

__all__ = ["MODELS", "Refusal", "check_model_rules", "images_returned", "model_listing"]

# Shapes follow the documented ``image-models?detailed=true`` answer. Resolutions are
# per model on purpose: clients must read them, not hard-code one list.
MODELS: dict[str, dict[str, Any]] = {
    "hidream": {
        "id": "hidream",
        "name": "HiDream",
        "description": "Fast, general text-to-image model (the server default).",
        "capabilities": {
            "image_generation": True,
            "image_to_image": False,
            "inpainting": False,
            "nsfw": False,
        },
        "supported_parameters": {
            "resolutions": ["1024x1024", "768x1360", "1360x768", "880x1168", "1168x880"],
            "max_images": 4,
        },
    },
    "flux-kontext": {
        "id": "flux-kontext",
        "name": "FLUX.1 Kontext",
        "description": "Image editing from one or more reference images.",
        "capabilities": {
            "image_generation": True,
            "image_to_image": True,
            "inpainting": False,
            "nsfw": False,
        },
        "supported_parameters": {
            "resolutions": ["1024x1024", "1376x768", "768x1376", "auto"],
            "max_images": 1,
            # An integer, as the docs type it (``supported_parameters.fixed_image_count?``).
            "fixed_image_count": 1,
        },
    },
    "gpt-image-1": {
        "id": "gpt-image-1",
        "name": "GPT Image 1",
        "description": "OpenAI's image model; accepts several input images and a mask.",
        "capabilities": {
            "image_generation": True,
            "image_to_image": True,
            "inpainting": True,
            "nsfw": False,
        },
        "supported_parameters": {
            "resolutions": ["1024x1024", "1536x1024", "1024x1536", "auto"],
            "max_images": 4,
        },
    },
    "flux-lora/inpainting": {
        "id": "flux-lora/inpainting",
        "name": "FLUX LoRA Inpainting",
        "description": "Inpainting with an image and a mask (white = edit).",
        "capabilities": {
            "image_generation": False,
            "image_to_image": True,
            "inpainting": True,
            "nsfw": False,
        },
        "supported_parameters": {
            "resolutions": ["1024x1024", "768x1024", "1024x768"],
            "max_images": 1,
        },
    },
}


def model_listing(price_per_image: float, *, detailed: bool) -> dict[str, Any]:
    """Return the ``image-models`` body; the fake charges ``price_per_image`` everywhere."""
    data: list[dict[str, Any]] = []
    for model in MODELS.values():
        entry: dict[str, Any] = {
            "id": model["id"],
            "object": "model",
            "name": model["name"],
            "owned_by": "nanogpt",
        }
        if detailed:
            entry.update(copy.deepcopy(model))
            entry["pricing"] = {
                "per_image": {
                    size.replace("x", "*"): price_per_image
                    for size in model["supported_parameters"]["resolutions"]
                    if size != "auto"
                },
                "currency": "USD",
            }
        data.append(entry)
    return {"object": "list", "data": data}


class Refusal(NamedTuple):
    """Why a request breaks a model's rules: the JSON field at fault and a message."""

    param: str
    message: str


def check_model_rules(
    model_id: str,
    *,
    n: int,
    size: str | None,
    has_image: bool,
    has_mask: bool,
    edit: bool,
) -> Refusal | None:
    """Check a request against ``model_id``'s catalogue entry; ``None`` when it may run."""
    model = MODELS[model_id]
    caps, params = model["capabilities"], model["supported_parameters"]
    max_images: int = params["max_images"]
    if n > max_images:
        return Refusal("n", f"'n' must be at most {max_images} for model '{model_id}'")
    resolutions: list[str] = params["resolutions"]
    if size is not None and size not in resolutions:
        return Refusal(
            "size",
            f"size '{size}' is not supported by model '{model_id}'; supported: "
            f"{', '.join(resolutions)} (GET /image-models?detailed=true)",
        )
    if has_image and not caps["image_to_image"]:
        return Refusal(
            "imageDataUrl",
            f"model '{model_id}' does not take input images (capabilities.image_to_image is "
            "false); pick a model that does, e.g. flux-kontext",
        )
    if has_mask and not caps["inpainting"]:
        return Refusal(
            "maskDataUrl",
            f"model '{model_id}' does not take a mask (capabilities.inpainting is false)",
        )
    if has_mask and not has_image:
        return Refusal("maskDataUrl", "'maskDataUrl' needs an input image to apply to")
    if not has_image and (edit or not caps["image_generation"]):
        what = "an image edit" if edit else f"model '{model_id}'"
        return Refusal("imageDataUrl", f"{what} needs an input image (imageDataUrl)")
    if caps["inpainting"] and not caps["image_generation"] and not has_mask:
        return Refusal(
            "maskDataUrl",
            f"model '{model_id}' inpaints: it needs both an input image and a mask "
            "(maskDataUrl, white where to edit)",
        )
    return None


def images_returned(model_id: str, n: int) -> int:
    """How many images a request for ``n`` returns (and is charged for) on ``model_id``."""
    fixed = MODELS[model_id]["supported_parameters"].get("fixed_image_count")
    return fixed if isinstance(fixed, int) and fixed > 0 else n
