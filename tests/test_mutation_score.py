"""``tools/mutation_score.py``: mutmut's names parsed right, and the score counted as documented."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "mutation_score.py"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_score", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("mutant", "module"),
    [
        ("nanogpt_async._http._retry.x_should_retry__mutmut_3", "nanogpt_async._http._retry"),
        ("nanogpt_async._errors.x__status_error__mutmut_12", "nanogpt_async._errors"),
        ("nanogpt_async._batch._budget.xǁBudgetǁadmit__mutmut_2", "nanogpt_async._batch._budget"),
        (
            "nanogpt_async._batch._budget.xǁSampleǁ__init____mutmut_7",
            "nanogpt_async._batch._budget",
        ),
        ("nanogpt_async._pacing._pacer.xǁPacerǁwait__mutmut_1", "nanogpt_async._pacing._pacer"),
    ],
)
def test_a_mutant_name_gives_its_module(tool: ModuleType, mutant: str, module: str) -> None:
    assert tool.module_of(mutant) == module


def test_equivalents_count_as_caught_and_unrun_mutants_are_left_out_of_the_score(
    tool: ModuleType,
) -> None:
    statuses = {
        "pkg.m.x_f__mutmut_1": "killed",
        "pkg.m.x_f__mutmut_2": "timeout",
        "pkg.m.x_f__mutmut_3": "survived",
        "pkg.m.x_f__mutmut_4": "survived",
        "pkg.m.x_f__mutmut_5": "not checked",
        "pkg.m.x_f__mutmut_6": "no tests",
        "pkg.other.xǁCǁg__mutmut_1": "not checked",
    }
    equivalents = {"pkg.m.x_f__mutmut_3": "why", "pkg.gone.x_h__mutmut_1": "why"}
    counts = tool.tally(statuses, equivalents)
    assert counts["pkg.m"] == Counter(mutants=6, killed=2, equivalent=1, survived=2, unrun=1)
    assert tool.score(counts["pkg.m"]) == pytest.approx(60.0)  # (2 + 1) / 5 run
    assert tool.score(counts["pkg.other"]) is None
    statuses["pkg.m.x_f__mutmut_3"] = "killed"
    assert tool.stale_equivalents(statuses, equivalents) == [
        "listed as equivalent but killed now: pkg.m.x_f__mutmut_3",
        "listed as equivalent but no such mutant now: pkg.gone.x_h__mutmut_1",
    ]


def test_every_listed_equivalent_has_a_reason(tool: ModuleType) -> None:
    listed = tool._equivalents()
    assert all(why for why in listed.values()), listed
