"""How the command line's process ends."""

from __future__ import annotations

import gc

import pytest

from nanogpt_async._cli import main


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["no-such-command"], 2)])
def test_the_command_line_freezes_the_collector_before_its_process_ends(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], code: int
) -> None:
    # Frozen objects are left to the OS: the interpreter's last collections walked them all
    # (~0.1 s of CPU after a one-prompt batch, under load).
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code
    assert frozen == [True]
