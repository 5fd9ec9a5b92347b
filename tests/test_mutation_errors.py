"""Error details mutation testing found unpinned (``nox -s mutation``, docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

from nanogpt_async._errors import FolderInUseError, PromptFileError, redact_url


def test_a_prompt_file_error_names_its_file_and_line() -> None:
    error = PromptFileError("not JSON", source="prompts.jsonl", line=7)
    assert (error.source, error.line, str(error)) == (
        "prompts.jsonl",
        7,
        "prompts.jsonl line 7: not JSON",
    )


def test_a_folder_in_use_error_names_the_folder_and_its_holder(tmp_path: Path) -> None:
    error = FolderInUseError("in use", folder=tmp_path, pid=42, host="box")
    assert (error.folder, error.pid, error.host) == (tmp_path, 42, "box")


def test_a_redacted_url_drops_everything_from_the_first_question_mark() -> None:
    # A "?" inside the query must not leave the part before it (a signature) in the message.
    url = "https://cdn.example/a.png?X-Amz-Signature=secret?x=1"
    assert redact_url(url) == "https://cdn.example/a.png"
