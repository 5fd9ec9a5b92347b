"""How the suite itself runs: what pytest rewrites, how xdist shares the tests out (conftest.py)."""

from __future__ import annotations

import sys

import hypothesis
import pytest
from _pytest.assertion.rewrite import AssertionRewritingHook

import nanogpt_async._client


def test_only_the_suites_own_modules_have_their_asserts_rewritten(
    request: pytest.FixtureRequest,
) -> None:
    # Rewriting every module of every package with a pytest plugin cost each worker 2.3 s of
    # CPU at start-up where bytecode is not cached (conftest.py says why it is turned off).
    if request.config.getoption("assertmode") != "rewrite":
        pytest.skip("assertion rewriting is off (--assert=plain)")
    rewritten = [
        module.__name__
        for module in (nanogpt_async._client, hypothesis, sys.modules[__name__])
        if isinstance(getattr(module, "__loader__", None), AssertionRewritingHook)
    ]
    assert rewritten == [__name__]
