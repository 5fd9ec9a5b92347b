"""Prompt files: text, JSONL and CSV, read lazily, bad lines reported with their number."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanogpt_async import InvalidInputError, PromptFileError, read_prompts
from nanogpt_async._input import _prompts as prompts_module
from nanogpt_async._input._prompts import (
    check_prompts,
    numbered_prompts,
    prompt_chunks,
    prompt_stamp,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_text_file_skips_blank_lines_and_strips_trailing_whitespace(tmp_path):
    path = write(tmp_path, "p.txt", "a red fox  \n\n   \na lighthouse\t\r\nlast line")
    assert list(read_prompts(path)) == [
        {"prompt": "a red fox"},
        {"prompt": "a lighthouse"},
        {"prompt": "last line"},
    ]


def test_txt_extension_is_text_even_when_a_line_starts_with_a_brace(tmp_path):
    path = write(tmp_path, "p.txt", "{curly} prompt\n")
    assert list(read_prompts(path)) == [{"prompt": "{curly} prompt"}]


def test_jsonl_by_extension_keeps_id_and_generate_fields(tmp_path):
    path = write(
        tmp_path,
        "p.jsonl",
        '{"prompt": "a fox", "id": 7, "n": 2, "seed": 3, "size": "1024x1024"}\n\n'
        '{"prompt": "a cat", "response_format": "url"}\n',
    )
    assert list(read_prompts(path)) == [
        {"prompt": "a fox", "id": "7", "n": 2, "seed": 3, "size": "1024x1024"},
        {"prompt": "a cat", "response_format": "url"},
    ]


def test_jsonl_is_detected_from_the_first_non_blank_line(tmp_path):
    path = write(tmp_path, "prompts", '\n\n{"prompt": "a fox"}\n{"prompt": "a cat"}\n')
    assert [r["prompt"] for r in read_prompts(path)] == ["a fox", "a cat"]


def test_other_files_without_a_brace_are_text(tmp_path):
    path = write(tmp_path, "prompts", "\na fox\n")
    assert list(read_prompts(path)) == [{"prompt": "a fox"}]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "x"}', "no 'prompt'"),
        ('{"prompt": "  "}', "'prompt' is empty"),
        ('{"prompt": 5}', "'prompt' must be a string"),
        ('{"prompt": "x", "sise": "1x1"}', "unknown field(s) ['sise']"),
        ('{"prompt": "x", "n": 0}', "n must be at least 1"),
        ('{"prompt": "x", "id": true}', "'id' must be"),
        ('{"prompt": "x", "response_format": "png"}', "response_format must be"),
    ],
)
def test_bad_jsonl_line_names_file_and_line_number(tmp_path, line, expected):
    path = write(tmp_path, "p.jsonl", '{"prompt": "fine"}\n\n' + line + "\n")
    records = read_prompts(path)
    assert next(records) == {"prompt": "fine"}
    with pytest.raises(PromptFileError) as caught:
        next(records)
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path} line 3: ")
    assert expected in str(caught.value)
    assert isinstance(caught.value, InvalidInputError)


def test_csv_converts_numbers_and_ignores_empty_cells(tmp_path):
    path = write(
        tmp_path,
        "p.csv",
        "id,prompt,n,seed,steps,strength,guidance,size,kontext_max_mode\n"
        'a,"a fox, in snow",2,42,30,0.5,7.5,1024x1024,yes\n'
        "b,a cat,,,,,,,\n"
        ",,,,,,,,\n",
    )
    assert list(read_prompts(path)) == [
        {
            "id": "a",
            "prompt": "a fox, in snow",
            "n": 2,
            "seed": 42,
            "num_inference_steps": 30,
            "strength": 0.5,
            "guidance_scale": 7.5,
            "size": "1024x1024",
            "kontext_max_mode": True,
        },
        {"id": "b", "prompt": "a cat"},
    ]


def test_csv_with_a_quoted_newline_reports_the_right_line(tmp_path):
    path = write(tmp_path, "p.csv", 'prompt,n\n"two\nlines",1\nbad,two\n')
    records = read_prompts(path)
    assert next(records) == {"prompt": "two\nlines", "n": 1}
    with pytest.raises(PromptFileError, match=r"line 4: column 'n' must be a whole number"):
        next(records)


def test_csv_without_a_prompt_column_is_refused(tmp_path):
    path = write(tmp_path, "p.csv", "text,n\nhello,1\n")
    with pytest.raises(PromptFileError, match="line 1: a CSV prompt file needs a 'prompt' column"):
        list(read_prompts(path))


def test_csv_with_an_unknown_column_is_refused(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,colour\nhello,red\n")
    with pytest.raises(PromptFileError, match=r"unknown column\(s\) \['colour'\]"):
        list(read_prompts(path))


def test_csv_images_cell_splits_on_semicolons(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,images\nmerge,a.png; b.png\n")
    assert list(read_prompts(path)) == [{"prompt": "merge", "images": ["a.png", "b.png"]}]


def test_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("prompt\nünïcode fox\n".encode("utf-8-sig"))
    assert list(read_prompts(path)) == [{"prompt": "ünïcode fox"}]


def test_dash_reads_standard_input(monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(b'{"prompt": "from stdin", "id": "s1"}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert list(read_prompts("-")) == [{"prompt": "from stdin", "id": "s1"}]


def test_csv_from_standard_input_needs_the_format(monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(b"prompt,seed\nfox,1\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert list(read_prompts("-", format="csv")) == [{"prompt": "fox", "seed": 1}]


def test_an_open_text_stream_is_accepted():
    assert list(read_prompts(io.StringIO("a\nb\n"), format="text")) == [
        {"prompt": "a"},
        {"prompt": "b"},
    ]


def test_reading_is_lazy_nothing_is_opened_before_iteration(tmp_path):
    records = read_prompts(tmp_path / "missing.txt")  # no error yet: a generator
    with pytest.raises(FileNotFoundError):
        next(records)


def test_reading_is_lazy_a_late_bad_line_does_not_stop_earlier_records(tmp_path):
    lines = "".join(f'{{"prompt": "p{i}"}}\n' for i in range(1000)) + "oops\n"
    records = read_prompts(write(tmp_path, "big.jsonl", lines))
    assert [next(records)["prompt"] for _ in range(3)] == ["p0", "p1", "p2"]


def test_unknown_format_is_a_value_error():
    with pytest.raises(ValueError, match="format must be"):
        list(read_prompts("x", format="yaml"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "line", "column"),
    [
        (b"a fox\nan owl\ncaf\xe9\n", 3, 4),
        (b'{"prompt": "a"}\n\n{"prompt": "\xff"}\n', 3, 13),
        (b"prompt\nfine\n\xc3\n", 3, 1),
        (b"old mac\rline two \xfe\rline three\r", 2, 10),
    ],
)
def test_invalid_utf8_names_its_line_and_column(tmp_path, data, line, column):
    path = tmp_path / ("p.csv" if data.startswith(b"prompt") else "p.dat")
    path.write_bytes(data)
    with pytest.raises(PromptFileError) as caught:
        list(read_prompts(path))
    assert caught.value.line == line
    assert f"at column {column}" in str(caught.value)
    assert "save the file as UTF-8" in str(caught.value)


def test_invalid_utf8_on_standard_input_names_its_line(monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(b"good\nbad \x80 byte\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    records = read_prompts("-")
    assert next(records) == {"prompt": "good"}
    with pytest.raises(PromptFileError, match=r"<stdin> line 2: not valid UTF-8 \(byte 0x80"):
        next(records)


def test_lone_carriage_returns_still_end_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"one\rtwo\r\nthree\n")
    assert [r["prompt"] for r in read_prompts(path)] == ["one", "two", "three"]


def test_a_repeated_id_names_both_lines(tmp_path):
    path = write(
        tmp_path,
        "p.jsonl",
        '{"id": 7, "prompt": "a"}\n{"id": "x", "prompt": "b"}\n\n{"id": "7", "prompt": "c"}\n',
    )
    records = read_prompts(path)
    assert [next(records)["id"], next(records)["id"]] == ["7", "x"]
    with pytest.raises(PromptFileError) as caught:
        next(records)
    assert caught.value.line == 4
    assert "the id '7' is already used on line 1" in str(caught.value)


def test_a_repeated_id_in_csv_names_both_record_lines(tmp_path):
    path = write(tmp_path, "p.csv", 'id,prompt\na,"two\nlines"\nb,x\na,y\n')
    with pytest.raises(PromptFileError, match="line 5: the id 'a' is already used on line 2"):
        list(read_prompts(path))


# -- comments ---------------------------------------------------------------------------------


def test_hash_lines_in_a_text_file_are_comments_and_an_escaped_hash_is_a_prompt(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# my animals\na fox\n   # indented note\n\\#1 best owl\n  \\#tag cat\n")
    assert list(numbered_prompts(path)) == [
        (2, {"prompt": "a fox"}),
        (4, {"prompt": "#1 best owl"}),
        (5, {"prompt": "  #tag cat"}),
    ]


def test_a_jsonl_file_opening_with_comments_is_still_read_as_jsonl(tmp_path):
    path = tmp_path / "prompts"  # no extension: the format is guessed from the first line
    path.write_text('# generated by make-prompts\n\n{"prompt": "a fox", "n": 2}\n')
    assert list(numbered_prompts(path)) == [(3, {"prompt": "a fox", "n": 2})]


def test_line_numbers_in_errors_count_comment_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('# header\n{"prompt": "a"}\n# note\n\n{"prompt": "b", "n": "x"}\n')
    with pytest.raises(PromptFileError, match=r"p\.jsonl line 5: n must be a whole number"):
        list(read_prompts(path))
    text = tmp_path / "p.txt"
    text.write_bytes(b"# header\n# more\nok\ncaf\xe9\n")
    with pytest.raises(PromptFileError, match=r"p\.txt line 4: not valid UTF-8"):
        list(read_prompts(text))


def _records_or_error(records: Iterator[dict[str, Any]]) -> list[object]:
    """Every record, then ``("error", message)`` if reading stopped at a bad line."""
    read: list[object] = []
    try:
        read.extend(records)
    except PromptFileError as exc:
        read.append(("error", str(exc)))
    return read


_JSONL_CASES = {
    "plain lines, blank and comment lines": '{"prompt":"a","id":"x"}\n\n# note\n{"prompt":"b"}\n',
    "a repeated id": '{"prompt":"a","id":"x"}\n\n{"prompt":"b","id":"x"}\n',
    "an integer id repeating a string one": '{"prompt":"a","id":1}\n{"prompt":"b","id":"1"}\n',
    "generate fields, then a blank prompt": '{"prompt":"a","model":"m","n":2}\n{"prompt":" "}\n',
    "an empty id": '{"prompt":"a"}\n{"prompt":"b","id":""}\n',
    "a null id": '\ufeff{"prompt":"a"}\n{"prompt":"b","id":null}\n',
    "a seed beyond 64 bits": '{"prompt":"a","seed":123456789012345678901234567890}\n',
    "a lone surrogate escape, then bad JSON": '{"prompt":"a"}\r{"prompt":"\\ud800"}\r\n{bad\n',
    "an array line": '{"prompt":"a","id":"q"}\n[1]\n',
    "an unknown field": '{"prompt":"a"}\n{"prompt":"b","colour":"red"}\n',
}


@pytest.mark.parametrize("size", [1, 2, 1024])
@pytest.mark.parametrize("text", _JSONL_CASES.values(), ids=list(_JSONL_CASES))
def test_prompt_chunks_of_a_jsonl_file_are_read_prompts_records_and_errors(tmp_path, text, size):
    path = write(tmp_path, "p.jsonl", text)
    sizes: list[int] = []

    def records() -> Iterator[dict[str, Any]]:
        for chunk in prompt_chunks(str(path), size=size):
            sizes.append(len(chunk))
            yield from chunk

    read = _records_or_error(records())
    assert read == _records_or_error(read_prompts(path))
    assert all(0 < length <= size for length in sizes)


def test_prompt_chunks_name_a_bad_utf8_line_after_the_records_before_it(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt":"a"}\n{"prompt":"b"}\n{"prompt":"\xff"}\n')
    chunks = prompt_chunks(str(path), size=1024)
    assert next(chunks) == [{"prompt": "a"}, {"prompt": "b"}]
    with pytest.raises(PromptFileError, match=r"line 3.*not valid UTF-8 \(byte 0xff"):
        next(chunks)


@pytest.mark.parametrize(
    ("name", "prompt_format"), [("p.txt", "auto"), ("p", "auto"), ("p.csv", "csv")]
)
def test_prompt_chunks_of_text_and_csv_are_read_prompts_records(tmp_path, name, prompt_format):
    text = "prompt,id\na fox,1\na cat,2\na owl,1\n" if prompt_format == "csv" else "a\n# c\nb\nc\n"
    path = write(tmp_path, name, text)
    chunks = prompt_chunks(str(path), format=prompt_format, size=2)
    read = _records_or_error(record for chunk in chunks for record in chunk)
    assert read == _records_or_error(read_prompts(path, format=prompt_format))


def test_prompt_chunks_leave_a_checked_files_ids_unchecked_while_it_is_unchanged(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt":"a","id":"x"}\n{"prompt":"b","id":"x"}\n')
    chunks = prompt_chunks(str(path), checked=prompt_stamp(path.stat()))
    assert [record for chunk in chunks for record in chunk] == [
        {"prompt": "a", "id": "x"},
        {"prompt": "b", "id": "x"},
    ]
    with pytest.raises(PromptFileError, match="already used on line 1"):
        list(prompt_chunks(str(path)))


def _lines(first: int, last: int) -> str:
    return "".join(f'{{"id":"i{n}","prompt":"p{n}"}}\n' for n in range(first, last))


def test_check_prompts_counts_the_records_and_stamps_the_file(tmp_path):
    path = write(tmp_path, "p.jsonl", _lines(0, 5))
    assert check_prompts(str(path)) == (5, prompt_stamp(path.stat()))
    with pytest.raises(PromptFileError, match="line 2: the id 'i0' is already used on line 1"):
        check_prompts(str(write(tmp_path, "r.jsonl", _lines(0, 1) * 2)))


def test_check_prompts_gives_no_stamp_for_a_file_changed_while_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "p.jsonl", _lines(0, 3))
    real = prompts_module.prompt_chunks

    def appending(*args: Any, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        yield from real(*args, **kwargs)
        with path.open("a", encoding="utf-8") as file:  # a writer still at work
            file.write(_lines(0, 1))

    monkeypatch.setattr(prompts_module, "prompt_chunks", appending)
    assert check_prompts(str(path)) == (3, None)


@pytest.mark.parametrize("when", ["before", "between"])
def test_a_checked_file_that_changed_ends_before_its_unchecked_records_are_handed_out(
    tmp_path: Path, when: str
) -> None:
    # A repeated id written after the check must never reach the batch unchecked.
    path = write(tmp_path, "p.jsonl", _lines(0, 4))
    _, stamp = check_prompts(str(path))
    assert stamp is not None
    chunks = prompt_chunks(str(path), size=2, checked=stamp)
    handed: list[dict[str, Any]] = []
    if when == "between":
        handed += next(chunks)
    with path.open("a", encoding="utf-8") as file:
        file.write(_lines(0, 1))
    with pytest.raises(PromptFileError, match="changed after it was checked") as caught:
        handed += [record for chunk in chunks for record in chunk]
    assert [record["id"] for record in handed] == (["i0", "i1"] if when == "between" else [])
    assert caught.value.line == (3 if when == "between" else 1)


# -- repeated ids in prompt_chunks' JSONL loop ------------------------------------------------

_REPEATING = (
    '{"id": 7, "prompt": "a"}\n# a note\n{"id": "x", "prompt": "b"}\n\n'
    '{"id": "y", "prompt": "c", "model": "m"}\n{"id": "7", "prompt": "d"}\n'
)


def _chunks_until_error(path: Path) -> tuple[list[Any], PromptFileError]:
    records: list[Any] = []

    def read_all() -> None:
        for chunk in prompt_chunks(str(path), size=2):
            records.extend(chunk)

    with pytest.raises(PromptFileError) as caught:
        read_all()
    return records, caught.value


@pytest.mark.parametrize("small", [True, False])
def test_a_repeated_id_in_a_jsonl_file_of_any_size_names_both_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, small: bool
) -> None:
    if not small:  # ids kept as 96-bit hashes in flat arrays (`RepeatedIds`), not in a set
        monkeypatch.setattr(prompts_module, "_HASHED_IDS_MAX_BYTES", 10)
    path = write(tmp_path, "p.jsonl", _REPEATING)
    records, error = _chunks_until_error(path)
    assert [record["id"] for record in records] == ["7", "x", "y"]
    assert error.line == 6
    assert "the id '7' is already used on line 1" in str(error)


def test_ids_sharing_a_hash_are_told_apart_by_reading_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompts_module, "_id_hash", lambda _: 42)  # every id collides
    distinct = write(
        tmp_path, "d.jsonl", "".join(f'{{"id": "i{n}", "prompt": "p"}}\n' for n in range(5))
    )
    assert [r["id"] for chunk in prompt_chunks(str(distinct)) for r in chunk] == [
        f"i{n}" for n in range(5)
    ]
    records, error = _chunks_until_error(write(tmp_path, "p.jsonl", _REPEATING))
    assert [record["id"] for record in records] == ["7", "x", "y"]
    assert error.line == 6
    assert "the id '7' is already used on line 1" in str(error)
