"""The fast paths for big answers give exactly what a plain JSON parse gives."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_async import AsyncNanoGPT
from nanogpt_async._codec import loads_generations
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
def test_loads_generations_equals_a_plain_parse_for_any_answer(doc: dict[str, Any], layout):
    raw = json.dumps(doc, **layout).encode()

    assert loads_generations(raw) == json.loads(raw)


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
            counter = _CountingSemaphore(client._big_bodies)
            client._big_bodies = counter  # type: ignore[assignment]
            responses = await asyncio.gather(
                *(client.images.generate(prompt=f"big {i}", n=2) for i in range(6))
            )

    assert all(len(response.data) == 2 for response in responses)
    assert 1 <= counter.most <= 2
    assert counter.holders == 0


@pytest.mark.parametrize("size", [10, 2_000_000])
async def test_request_bodies_encode_the_same_and_big_ones_leave_the_loop(monkeypatch, size):
    from nanogpt_async import _codec  # noqa: PLC0415

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
