"""A small, realistic image-model catalogue for ``GET /image-models``."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["MODELS", "model_listing"]

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
            "fixed_image_count": True,
        },
    },
    "gpt-image-1": {
        "id": "gpt-image-1",
        "name": "GPT Image 1",
        "description": "OpenAI's image model; accepts several input images.",
        "capabilities": {
            "image_generation": True,
            "image_to_image": True,
            "inpainting": False,
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
