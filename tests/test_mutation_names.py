"""Item ids and shown requests: rules mutation testing found unpinned (``nox -s mutation``).

An item's id is what a resume finds it by: an id computed differently from one run (or one
release) to the next makes a resume pay for the item again. The request shown in results and
the manifest replaces input images by a placeholder whose parts say what the image was.
"""

from __future__ import annotations

import hashlib

from nanogpt_async._batch._names import public_body, request_digest


def digest_of(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def test_an_input_image_that_is_not_valid_unicode_still_gets_a_stable_id() -> None:
    # A Python caller may hand any str as a data URL; ids must not crash on a lone surrogate.
    one = request_digest({"prompt": "x", "imageDataUrl": "data:image/png;base64,\ud800"})
    other = request_digest({"prompt": "x", "imageDataUrl": "data:image/png;base64,\udfff"})
    assert one != other
    assert one == request_digest({"prompt": "x", "imageDataUrl": "data:image/png;base64,\ud800"})


def test_a_placeholder_shows_the_media_type_the_decoded_size_and_a_short_digest() -> None:
    url = "data:image/png;base64,AAAA"
    shown = public_body({"prompt": "x", "imageDataUrl": url})["imageDataUrl"]
    assert shown == f"<image/png, ~3 bytes, sha256:{digest_of(url)}>"


def test_a_placeholders_media_type_ends_at_the_first_parameter() -> None:
    url = "data:image/png;name=cat.png;base64,AAAA"
    shown = public_body({"prompt": "x", "maskDataUrl": url})["maskDataUrl"]
    assert shown == f"<image/png, ~3 bytes, sha256:{digest_of(url)}>"


def test_a_data_url_without_a_media_type_is_shown_as_an_image() -> None:
    url = "data:,AAAA"
    shown = public_body({"prompt": "x", "imageDataUrls": [url]})["imageDataUrls"]
    assert shown == [f"<image, ~3 bytes, sha256:{digest_of(url)}>"]


def test_a_placeholders_size_counts_everything_after_the_first_comma() -> None:
    url = "data:image/png;base64,AAAA,AAAA"  # 9 characters of data: about 6 bytes
    shown = public_body({"prompt": "x", "imageDataUrl": url})["imageDataUrl"]
    assert shown == f"<image/png, ~6 bytes, sha256:{digest_of(url)}>"
