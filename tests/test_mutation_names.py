"""Item ids and shown requests: rules mutation testing found unpinned (``nox -s mutation``).

An item's id is what a resume finds it by: an id computed differently from one run (or one
release) to the next makes a resume pay for the item again. The request shown in results and
the manifest replaces input images by a placeholder whose parts say what the image was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nanogpt_async._batch._names import (
    _SLUG_MAX,
    IdentityCounter,
    public_body,
    request_digest,
    safe_path,
    slugify,
)


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


def test_ids_of_requests_with_input_images_are_those_of_the_release_that_wrote_the_manifest() -> (
    None
):
    # Pinned values: a change here means a resume no longer finds what earlier runs recorded
    # (and pays for it again). One image and a list of one are different requests; a list
    # counts every image, not only its first.
    one, two = "data:image/png;base64,AAAA", "data:image/png;base64,BBBB"
    assert request_digest({"prompt": "make it snow", "imageDataUrl": one}) == "62c7b02d0118f02d"
    assert request_digest({"prompt": "make it snow", "imageDataUrls": [one]}) == "8db439557bfa4935"
    pair = request_digest({"prompt": "make it snow", "imageDataUrls": [one, two]})
    assert pair == "0b7540fc5674fce7"
    assert request_digest({"prompt": "make it snow", "imageDataUrls": [one, one]}) != pair


def test_ids_of_a_long_input_are_those_of_the_release_that_wrote_the_manifest() -> None:
    # 30,000 distinct requests fill three layers of the filter that counts occurrences; its
    # false positives (a first occurrence numbered -1) depend on every parameter of the filter,
    # so the whole sequence of ids is pinned: a resume of an earlier release's folder must find
    # every item by the same id. Repeats of early and late requests are found in any layer.
    digests = [hashlib.sha256(f"prompt {i}".encode()).hexdigest()[:16] for i in range(30_000)]
    counter = IdentityCounter()
    ids = [counter.next_id(digest) for digest in digests + digests[::997] + digests[-40:]]
    assert len(set(ids)) == len(ids)
    assert sum(item_id.endswith("-1") for item_id in ids[:30_000]) == 110  # 0.37%: below 1%
    # Each layer holds exactly its capacity (8,192, then twice as many) before the next one
    # starts: 29,890 first occurrences remembered, 8,192 + 16,384 + 5,314.
    assert (len(counter._layers), counter._in_layer) == (3, 5314)
    assert all(not item_id.endswith("-0") for item_id in ids[30_000:])
    pinned = "26d3c83cfd47eaa9b750beae192df60ef8cabefba4c87fe3612f6bad40adf09e"
    assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == pinned


def test_a_slug_cut_at_its_maximum_length_does_not_end_in_a_hyphen() -> None:
    # The cut falls right after a word: the hyphen that joined it to the next word goes too.
    words = "x" * (_SLUG_MAX - 1) + " and more"
    assert slugify(words) == "x" * (_SLUG_MAX - 1)
    assert slugify("  --a fox--  ") == "a-fox"


@pytest.mark.parametrize("name", ["..", "a\0b.png", "sub/../a.png", "./a.png"])
def test_a_file_name_that_is_not_a_plain_name_in_the_folder_is_refused(
    tmp_path: Path, name: str
) -> None:
    # The belt to image_file_name's braces, and the gallery's check of names read from a
    # manifest: the parent folder, a NUL, and any directory part (even one leading back in).
    with pytest.raises(ValueError, match="outside the output folder") as refused:
        safe_path(tmp_path, name)
    assert str(tmp_path.resolve()) in str(refused.value)  # says which folder


def test_a_plain_name_is_kept_in_the_folder(tmp_path: Path) -> None:
    assert safe_path(tmp_path, "000001-a-fox-0.png") == tmp_path / "000001-a-fox-0.png"
