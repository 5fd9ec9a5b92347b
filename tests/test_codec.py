"""The fast paths for big answers give exactly what a plain JSON parse gives."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nanogpt_async import AsyncNanoGPT, _codec
from nanogpt_async._codec import loads, loads_generations
from nanogpt_async.testing import FakeNanoGPT

b64_text = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
odd_text = st.text(max_size=30) | st.sampled_from(['"b64_json"', '\\"b64_json\\":"x"', "\\", '"'])
item = st.one_of(
    st.fixed_dictionaries({"b64_json": b64_text}),
    st.fixed_dictionaries({"url": st.text(max_size=40)}),
    st.fixed_dictionaries({"b64_json": b64_text, "revised_prompt": odd_text}),
    st.dictionaries(st.sampled_from(["weird", "b64_json", "note"]), odd_text, max_size=3),
)
document = st.fixed_dictionaries(
    {"created": st.integers(), "data": st.lists(item, max_size=5)},
    optional={
        "cost": st.floats(allow_nan=False, allow_infinity=False),
        "debug": st.dictionaries(st.sampled_from(["b64_json", "x"]), odd_text, max_size=2),
        "note": odd_text,
    },
)
layouts = st.sampled_from([{}, {"indent": 2}, {"separators": (",", ":")}, {"ensure_ascii": False}])


@settings(max_examples=400)
@given(document, layouts)
# Integers orjson holds only as floats (issue 16: Hypothesis drew these at random).
@example({"created": -(2**63) - 1, "data": []}, {})
@example({"created": 2**64, "data": [{"b64_json": "QUJD"}]}, {})
@example({"created": -(10**400), "data": [{"b64_json": "QUJD"}]}, {"indent": 2})
def test_loads_generations_equals_a_plain_parse_for_any_answer(doc: dict[str, Any], layout):
    raw = json.dumps(doc, **layout).encode()

    assert loads_generations(raw) == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # A key spelled with a \u escape is the same key: the last one wins, as json.loads says.
        b'{"data": [{"b64_json": "QUJD", "b64\\u005fjson": ""}]}',
        b'{"data": [{"b64\\u005fjson": "", "b64_json": "QUJD"}]}',
        b'{"data": [{"b64_json": "QUJD", "b64\\u005fjson": "\\u0000nanogpt-hole:0"}]}',
        b'{"data": [{"b64_json": "QUJD"}, {"b64\\u005fjson": ""}]}',
        b'{"a\\"b64_json": "QUJD", "data": [{"b64_json": ""}]}',
        b'{"created": -9223372036854775809, "data": [{"b64_json": "QUJD"}]}',
    ],
)
def test_loads_generations_agrees_with_a_plain_parse_on_escaped_keys_and_big_integers(raw):
    assert loads_generations(raw) == json.loads(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"cost": 1' + b"0" * 400 + b"}", {"cost": 10**400}),
        (b'{"cost": -9223372036854775809}', {"cost": -(2**63) - 1}),
        (b'{"cost": 1e400}', {"cost": float("inf")}),
    ],
)
def test_loads_reads_numbers_orjson_refuses_or_rounds_exactly_as_the_stdlib(raw, expected):
    assert loads(raw) == expected


def test_loads_reads_nan_like_the_stdlib_and_deep_nesting_is_a_value_error():
    assert loads(b'{"cost": NaN}')["cost"] != loads(b'{"cost": NaN}')["cost"]
    with pytest.raises(ValueError, match=r"nested too deeply|Expecting|unexpected"):
        loads(b"[" * 200_000 + b"]" * 200_000)


def test_loads_generations_falls_back_on_invalid_json():
    with pytest.raises(json.JSONDecodeError):
        loads_generations(b'{"data": [{"b64_json": "AAAA"}], ')


class _CountingSemaphore:
    """Wraps the client's big-body semaphore to record how many holders there were at once."""

    def __init__(self, inner: anyio.Semaphore) -> None:
        self._inner = inner
        self.holders = 0
        self.most = 0

    async def acquire(self) -> None:
        await self._inner.acquire()
        self.holders += 1
        self.most = max(self.most, self.holders)

    def release(self) -> None:
        self.holders -= 1
        self._inner.release()


async def test_big_answers_are_read_a_few_at_a_time_and_all_arrive():
    fake = FakeNanoGPT(api_key="k", image_bytes=600_000, latency=0.05)
    with fake.run_in_thread() as server:
        async with AsyncNanoGPT(api_key="k", base_url=server.base_url) as client:
            counter = _CountingSemaphore(client.channel.big_bodies._semaphore)
            client.channel.big_bodies._semaphore = counter  # type: ignore[assignment]
            responses: list[Any] = []

            async def generate(i: int) -> None:
                responses.append(await client.images.generate(prompt=f"big {i}", n=2))

            async with anyio.create_task_group() as group:
                for i in range(6):
                    group.start_soon(generate, i)

    assert all(len(response.data) == 2 for response in responses)
    assert 1 <= counter.most <= 2
    assert counter.holders == 0


@pytest.mark.parametrize("size", [10, 2_000_000])
async def test_request_bodies_encode_the_same_and_big_ones_leave_the_loop(monkeypatch, size):
    from nanogpt_async import _codec

    offloaded: list[object] = []
    real = anyio.to_thread.run_sync

    async def spy(func, *args):
        offloaded.append(func)
        return await real(func, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    body = {"prompt": "x", "imageDataUrls": ["data:image/png;base64," + "A" * size]}

    encoded = await _codec.dumps_maybe_offloaded(body)

    assert json.loads(encoded) == body
    assert offloaded == ([_codec.dumps] if size > _codec.OFFLOAD_THRESHOLD else [])


def _big_answer(images: int, size: int = 600_000, **extra: Any) -> bytes:
    text = base64.b64encode(bytes(range(256)) * (size // 256)).decode()
    body = {"created": 1, "data": [{"b64_json": text} for _ in range(images)], **extra}
    return json.dumps(body).encode()


def _received(raw: bytes, chunk: int = 64 * 1024) -> list[bytes]:
    return [raw[i : i + chunk] for i in range(0, len(raw), chunk)]


@pytest.fixture
def offloaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to a worker thread."""
    names: list[str] = []
    real = anyio.to_thread.run_sync

    async def spy(func: Any, *args: Any) -> Any:
        names.append(func.__name__)
        return await real(func, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    return names


async def test_a_big_answer_goes_to_a_worker_thread_only_to_be_joined(offloaded):
    # Work that holds the GIL (finding the strings, making str objects, parsing the rest) stalls
    # the event loop more from a worker thread than on the loop itself (benchmark W4): only the
    # join, a copy made without the GIL, leaves the loop.
    raw = _big_answer(images=4)

    payload = await _codec.loads_chunks_maybe_offloaded(_received(raw))

    assert payload == json.loads(raw)
    assert offloaded == ["_join"]


async def test_an_answer_under_a_mebibyte_is_joined_and_parsed_on_the_loop(offloaded):
    # bytes.join holds the GIL below 1 MiB: a worker thread would only add its hop.
    raw = _big_answer(images=1)
    assert _codec.OFFLOAD_THRESHOLD < len(raw) < 1024 * 1024

    payload = await _codec.loads_chunks_maybe_offloaded(_received(raw))

    assert payload == json.loads(raw)
    assert offloaded == []


async def test_a_generation_with_big_images_leaves_the_loop_only_to_join_and_decode(offloaded):
    fake = FakeNanoGPT(api_key="k", image_bytes=600_000)
    with fake.run_in_thread() as server:
        async with AsyncNanoGPT(api_key="k", base_url=server.base_url) as client:
            response = await client.images.generate(prompt="big", n=2)
            answered = list(offloaded)
            images = [await image.read() for image in response.data]

    assert answered == ["_join"]
    assert offloaded == ["_join", "decoded_image", "decoded_image"]  # decoded and checked
    assert all(image.startswith(b"\x89PNG") for image in images)


async def test_a_big_answer_is_parsed_letting_other_tasks_run_before_each_image(monkeypatch):
    # At most one image's base64 string is made between two turns of the event loop: a loop
    # given a whole 16 MB answer to parse at once stalls for its whole parse.
    raw = _big_answer(images=4)
    events: list[str] = []
    real_text, real_turn = _codec._text, anyio.lowlevel.cancel_shielded_checkpoint

    def text(ascii_bytes: memoryview) -> str:
        events.append("image")
        return real_text(ascii_bytes)

    async def turn() -> None:
        events.append("turn")
        await real_turn()

    monkeypatch.setattr(_codec, "_text", text)
    monkeypatch.setattr(anyio.lowlevel, "cancel_shielded_checkpoint", turn)

    payload = await _codec.loads_chunks_maybe_offloaded(_received(raw))

    assert payload == json.loads(raw)
    assert events.count("image") == 4
    assert "image, image" not in ", ".join(events)


@pytest.mark.parametrize(
    ("raw", "in_threads"),
    [
        # An answer written with a NUL escape of its own: the whole of it is parsed plainly.
        (_big_answer(images=2, note="a\u0000b"), ["_join", "loads"]),
        # A base64 string with an escape in it: the same.
        (_big_answer(images=2).replace(b'": "', b'": "\\/', 1), ["_join", "loads"]),
        # An escape elsewhere is no reason to.
        (_big_answer(images=2).replace(b'"created"', b'"x": "\\/", "created"'), ["_join"]),
    ],
)
async def test_a_big_unusual_answer_parses_as_the_stdlib_does_its_plain_parse_in_a_thread(
    offloaded, raw, in_threads
):
    assert await _codec.loads_chunks_maybe_offloaded(_received(raw)) == json.loads(raw)
    assert offloaded == in_threads


@pytest.mark.parametrize("cut", [2, 5])  # the answer's end; or into its last base64 string
async def test_a_big_answer_that_is_not_json_is_a_value_error(cut):
    raw = _big_answer(images=2)[:-cut]

    with pytest.raises(json.JSONDecodeError):  # the channel: "a body that is not JSON"
        await _codec.loads_chunks_maybe_offloaded(_received(raw))


async def test_a_big_answer_received_is_parsed_to_its_end_though_cancelled_meanwhile(monkeypatch):
    # The answer is paid for: a cancellation arriving during the parse lands after it.
    raw = _big_answer(images=4)
    real_steps = _codec._generation_steps
    parsed: list[Any] = []

    with anyio.CancelScope() as scope:

        def cancelling_steps(data: bytes) -> Any:
            scope.cancel()  # once the body is joined, as the first step starts
            return (yield from real_steps(data))

        monkeypatch.setattr(_codec, "_generation_steps", cancelling_steps)
        parsed.append(await _codec.loads_chunks_maybe_offloaded(_received(raw)))
        await anyio.lowlevel.checkpoint()
        parsed.append("not cancelled")

    assert parsed == [json.loads(raw)]
