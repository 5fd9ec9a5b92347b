"""Preparing input entries: the fast paths decide exactly as the general one."""

from __future__ import annotations

from typing import Any

import pytest

from nanogpt_async._batch._lifecycle import Lifecycle
from nanogpt_async._batch._prepare import Job, Preparer
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._batch._tally import Tally
from nanogpt_async._errors import RepeatedIdError

_ENTRIES: list[Any] = [
    {"id": "a", "prompt": "a red fox"},
    {"prompt": "a red fox"},
    {"prompt": "a red fox"},  # the same body again: a second occurrence id
    {"id": None, "prompt": "an owl"},
    {"id": "b", "prompt": "  "},
    {"id": "c", "prompt": None},
    {"id": "d"},
    {"id": "e", "prompt": 7},
    {"id": "f", "prompt": "caf\u00e9"},
    {"id": "g", "prompt": "\ud800 a lone surrogate"},
    {"prompt": "\ud800"},
    {"id": 3, "prompt": "an integer id"},
    {"id": "h", "prompt": "a cat", "model": "hidream"},
    {},
]


def _outcome(prepared: Job | ItemResult | None) -> tuple[Any, ...]:
    if isinstance(prepared, Job):
        return ("job", prepared.index, prepared.id, prepared.body, prepared.request, prepared.n)
    assert isinstance(prepared, ItemResult)
    return ("result", prepared.index, prepared.id, prepared.status, str(prepared.error))


def _prepared(defaults: dict[str, Any]) -> list[tuple[Any, ...]]:
    preparer = Preparer(defaults, Lifecycle(), Tally(None))
    return [_outcome(preparer.prepare_now(entry, index)) for index, entry in enumerate(_ENTRIES)]


@pytest.mark.parametrize("defaults", [{}, {"model": "hidream"}])
def test_an_id_and_prompt_entry_is_prepared_as_the_general_path_prepares_it(monkeypatch, defaults):
    fast = _prepared(defaults)
    monkeypatch.setattr(Preparer, "_plain_job", lambda *_: None)  # the general path only
    assert fast == _prepared(defaults)
    assert fast[0][0] == "job"
    assert fast[4][0] == fast[9][0] == "result"


def test_a_repeated_id_is_refused_on_the_fast_path():
    preparer = Preparer({}, Lifecycle(), Tally(None))
    preparer.prepare_now({"id": "a", "prompt": "one"}, 0)
    with pytest.raises(RepeatedIdError, match="item 1 has the id 'a' of item 0"):
        preparer.prepare_now({"id": "a", "prompt": "two"}, 1)
