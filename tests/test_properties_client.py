"""Property tests (hypothesis) for the client's parsers and input builders."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_async import image_data_url
from nanogpt_async._errors import parse_error_body, status_error
from nanogpt_async._http._retry import parse_retry_after
from nanogpt_async._input._data_urls import parse_data_url
from nanogpt_async._sniff import sniff_image

MAGIC = {
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff\xe0",
    "image/gif": b"GIF89a",
    "image/webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["error", "message", "code", "detail", "type"]) | st.text(),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(st.binary(max_size=2048), st.sampled_from(["", "application/json", "text/html"]))
def test_error_body_parsing_never_raises_on_arbitrary_bytes(body, content_type):
    message, _ = parse_error_body(body, content_type)

    assert isinstance(message, str)
    assert message


@given(json_values, st.sampled_from([400, 401, 402, 403, 404, 429, 500, 503, 599]))
def test_any_json_error_body_yields_a_message_and_an_error(value, status):
    error = status_error(status, json.dumps(value).encode())

    assert error.message
    assert str(error).startswith(f"NanoGPT answered {status}")


@settings(max_examples=200)
@given(st.sampled_from(sorted(MAGIC)), st.binary(max_size=4096))
def test_data_urls_round_trip_bytes_and_mime_for_every_supported_type(mime, tail):
    data = MAGIC[mime] + tail

    url = image_data_url(data)

    assert url.startswith(f"data:{mime};base64,")
    assert parse_data_url(url) == data
    kind = sniff_image(data)
    assert kind is not None
    assert kind.mime == mime


@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]), st.text(max_size=40)))
def test_retry_after_parsing_never_raises_and_is_never_negative(headers):
    value = parse_retry_after(headers)

    assert value is None or value >= 0
