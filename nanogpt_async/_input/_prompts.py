r"""Prompt files: plain text, JSONL or CSV, read lazily (one line in memory at a time).

* **text**: one prompt per line; blank lines are skipped, trailing whitespace is dropped, and
  a line whose first non-blank character is ``#`` is a comment (a prompt that starts with
  ``#`` is written ``\#...``: the backslash is dropped).
* **JSONL**: one JSON object per line with ``"prompt"``, an optional ``"id"`` and any
  ``images.generate`` field (``"model"``, ``"n"``, ``"size"``, ``"seed"``...); with
  ``"operation": "edit"`` and an ``"image"`` the line is an edit (``images.edit``). ``#``
  comment lines are skipped here too (no JSON line starts with ``#``).
* **CSV**: a header row with a ``prompt`` column; optional ``id``, ``operation`` and
  generate-field columns. Empty cells mean "not set"; numbers are converted.

Every record is checked as it is read, so a typo on line 90 000 fails with its line number
before that line's request is sent, not after a confusing server error. So is the text itself
(each line is decoded as UTF-8 on its own, so a bad byte is reported with its line) and every
``id`` (one id twice names both lines: resume finds items by id).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from nanogpt_async._codec import loads
from nanogpt_async._errors import InvalidInputError, PromptFileError
from nanogpt_async._input._body import ITEM_FIELDS, check_generation_fields
from nanogpt_async._input._ids import RepeatedIds

_fast_loads: Callable[[str], Any]
try:
    from orjson import loads as _fast_loads
except ImportError:  # the "speed" extra is not installed
    _fast_loads = loads

__all__ = [
    "PromptFormat",
    "PromptStamp",
    "check_prompts",
    "numbered_prompts",
    "prompt_chunks",
    "prompt_stamp",
    "read_prompts",
]

#: ``"auto"`` picks the format from the extension, then from the first non-blank line.
PromptFormat = Literal["auto", "text", "jsonl", "csv"]

_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
#: What ``surrogateescape`` turns an undecodable byte into (valid UTF-8 never decodes to it).
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# ITEM_FIELDS includes "operation": "edit" rows go to the edits endpoint.
_KNOWN_FIELDS = frozenset({*ITEM_FIELDS, "id"})
# A record of these fields alone needs no more checks than its prompt's and its id's.
_ID_AND_PROMPT = frozenset({"id", "prompt"})
#: A JSONL file up to this size has its ids checked with a set of hashes (`_HashedIds`): the
#: command line checks files this size whole before a run (``PRECOUNT_MAX_BYTES``).
_HASHED_IDS_MAX_BYTES = 64 * 1024 * 1024
# CSV cells are strings; these say how to turn one into the value generate() takes.
_TRUE = frozenset({"1", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "no", "n", "off"})
# Short spellings people put in spreadsheet headers.
_CSV_ALIASES: Mapping[str, str] = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "format": "response_format",
}


def read_prompts(
    source: str | os.PathLike[str] | IO[str],
    *,
    format: PromptFormat = "auto",
) -> Generator[dict[str, Any], None, None]:
    r"""Yield one request per prompt of a text, JSONL or CSV file, lazily.

    Each request is a dict for [Images.generate_many][nanogpt_async.Images.generate_many] (or for
    ``client.images.generate(**request)`` once ``"id"`` is removed): ``{"prompt": ...}`` plus,
    for JSONL and CSV, an optional ``"id"`` and any generate field. The file is opened when
    iteration starts and read one line at a time, so a file of millions of prompts costs
    constant memory.

    Args:
        source: A path, ``"-"`` for standard input, or an open text file.
        format: ``"text"``, ``"jsonl"``, ``"csv"``, or ``"auto"``: ``.jsonl``/``.ndjson`` and
            ``.csv`` by extension, ``.txt`` is text, anything else is JSONL when its first
            line that is neither blank nor a ``#`` comment starts with ``{``, else text. CSV
            on standard input needs ``format="csv"``.

    Yields:
        Requests as dicts, in file order.

    Raises:
        PromptFileError: a line that is not valid JSON, lacks a prompt, has an unknown field
            or a bad value; the message names the file and line.
        OSError: the file cannot be opened.

    Example:
        >>> from pathlib import Path
        >>> text = "# animals\na red fox\n\na lighthouse at dusk  \n\\#1 trending\n"
        >>> _ = Path("prompts.txt").write_text(text)
        >>> list(read_prompts("prompts.txt"))
        [{'prompt': 'a red fox'}, {'prompt': 'a lighthouse at dusk'}, {'prompt': '#1 trending'}]
    """
    for _, record in numbered_prompts(source, format=format):
        yield record


def numbered_prompts(
    source: str | os.PathLike[str] | IO[str],
    *,
    format: PromptFormat = "auto",
) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """`read_prompts`, each request with its line number (where its record starts)."""
    if format not in ("auto", "text", "jsonl", "csv"):
        raise ValueError(f"format must be 'auto', 'text', 'jsonl' or 'csv', got {format!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path == "-":
            yield from _read_stream(_stdin_lines(), "<stdin>", format)
            return
        chosen = format
        if chosen == "auto":
            suffix = Path(path).suffix.lower()
            if suffix in _JSONL_SUFFIXES:
                chosen = "jsonl"
            elif suffix == ".csv":
                chosen = "csv"
            elif suffix == ".txt":
                chosen = "text"
        with Path(path).open("rb") as stream:
            yield from _read_stream(_decoded_lines(stream, path), path, chosen)
        return
    name = getattr(source, "name", None)
    name = name if isinstance(name, str) else "<stream>"
    yield from _read_stream(_text_lines(source, name), name, format)


def prompt_chunks(
    path: str,
    *,
    format: PromptFormat = "auto",
    size: int = 1024,
    checked: PromptStamp | None = None,
) -> Generator[list[dict[str, Any]], None, None]:
    """`read_prompts` of the file at ``path``, in lists of up to ``size`` records.

    The same records, in the same order, with the same errors, raised once the records before
    the bad line were yielded. A JSONL file (by ``format`` or extension) is read in one tight
    loop: its usual line, ``{"id": ..., "prompt": ...}``, is parsed and checked inline, any
    other line goes through the exact checks (`_jsonl_record`). The command line reads a
    prompt file twice (checked whole before anything is paid, then run): through the general
    generators a million lines cost about 3.3 s each time, here about half (issue 12).

    ``checked``: the file's `prompt_stamp` when a whole read found its ids unique
    (`check_prompts`). A JSONL file's ids are then not checked again (nor by the batch: about
    1 µs an id, a second of a million-line resume) as long as the file keeps that stamp; each
    list is handed out only once the file was found still unchanged after reading it, else
    the reading ends with a `PromptFileError` naming the list's first line.
    """
    suffix = Path(path).suffix.lower()
    if not (format == "jsonl" or (format == "auto" and suffix in _JSONL_SUFFIXES)):
        # The general readers check ids themselves, whatever ``checked`` says.
        yield from _chunked(numbered_prompts(path, format=format), size, None)
        return
    with Path(path).open("rb") as stream:
        # Held here, not in `_jsonl_records`: it closes the file when collected.
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        unchanged = None
        if checked is not None:
            unchanged = _Unchanged(text.fileno(), checked, path)
            unchanged.check(1)  # the file opened is the one checked
        yield from _chunked(_jsonl_records(text, path, check_ids=checked is None), size, unchanged)


#: What `prompt_stamp` says of a file: device, inode, size, modification and change times.
PromptStamp = tuple[int, int, int, int, int]


def prompt_stamp(info: os.stat_result) -> PromptStamp:
    """A prompt file's stamp: any write to it, or another file at its name, changes it."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def check_prompts(path: str, *, format: PromptFormat = "auto") -> tuple[int, PromptStamp | None]:
    """Read the whole file at ``path`` as `prompt_chunks` does (every line and id checked).

    Returns the number of records and the file's `prompt_stamp`, for `prompt_chunks`'s
    ``checked``; ``None`` instead of a stamp if the file changed while it was read.

    Raises:
        PromptFileError: a bad line or a repeated id.
        OSError: the file cannot be read.
    """
    before = prompt_stamp(Path(path).stat())
    count = sum(map(len, prompt_chunks(path, format=format)))
    return count, before if prompt_stamp(Path(path).stat()) == before else None


class _Unchanged:
    """Checks that an open prompt file still has the stamp it had when it was checked."""

    __slots__ = ("_fd", "_path", "_stamp")

    def __init__(self, fd: int, stamp: PromptStamp, path: str) -> None:
        self._fd = fd
        self._stamp = stamp
        self._path = path

    def check(self, line: int) -> None:
        """Raise `PromptFileError` (at ``line``) if the file changed since it was checked."""
        if prompt_stamp(os.fstat(self._fd)) != self._stamp:
            raise PromptFileError(
                "the file changed after it was checked before the run, so its ids were not "
                "checked for repeats from here on; nothing from here on was sent. Run the same "
                "command again once the file is written (finished items are skipped)",
                source=self._path,
                line=line,
            )


def _chunked(
    records: Iterator[tuple[int, dict[str, Any]]], size: int, unchanged: _Unchanged | None
) -> Iterator[list[dict[str, Any]]]:
    """Numbered ``records`` in lists of up to ``size``; each checked `_Unchanged` first."""
    chunk: list[dict[str, Any]] = []
    first = 0
    try:
        for number, record in records:
            if not chunk:
                first = number
            chunk.append(record)
            if len(chunk) >= size:
                if unchanged is not None:
                    unchanged.check(first)
                yield chunk
                chunk = []
    except PromptFileError:  # the records before the bad line are handed out first
        if chunk:
            if unchanged is not None:
                unchanged.check(first)
            yield chunk
        raise
    if chunk:
        if unchanged is not None:
            unchanged.check(first)
        yield chunk


def _jsonl_records(
    text: io.TextIOWrapper, path: str, *, check_ids: bool
) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSONL file's numbered records: `_read_stream` over `_read_lines`, in one loop."""
    parse, escaped = _fast_loads, _ESCAPED_BYTE
    seen: _HashedIds | RepeatedIds | None = None
    if check_ids:
        small = os.fstat(text.fileno()).st_size <= _HASHED_IDS_MAX_BYTES
        seen = _HashedIds(path) if small else RepeatedIds()
    hashing = seen if isinstance(seen, _HashedIds) else None
    hashed = hashing.keys if hashing is not None else set()
    id_hash = _id_hash
    for number, line in enumerate(text, start=1):
        if not line.isascii() and (bad := escaped.search(line)):
            raise _not_utf8(bad, path, number)
        try:
            record = parse(line)
        except ValueError:
            record = None
        if not _is_plain(record):  # else the exact checks, with their errors
            if not line.strip() or _is_comment(line):
                continue
            record = _jsonl_record(line, path, number)
        item_id = record.get("id")
        if hashing is None:
            _first_use(seen, item_id, path, number)
        elif item_id is not None:  # `_HashedIds.add` inline: a million ids 0.53 -> 0.42 s
            if (key := id_hash(item_id)) in hashed:
                hashing.confirm(number)
            else:
                hashed.add(key)
        yield number, record


class _HashedIds:
    """`RepeatedIds` for a JSONL file of at most `_HASHED_IDS_MAX_BYTES`: a set of 64-bit hashes.

    About 0.1 µs an id instead of 1-2 µs (a million-line file: about 1.5 s of the command
    line's up-front check), at about 80 bytes an id instead of 32: a file this small holds
    at most about 2.5 million ids (its lines are 25 bytes at least). A hash met before is a
    repeat, or about once in 10¹³ files of a million ids a collision: then the exact reader
    (`numbered_prompts`) reads the file again up to this line, and raises at a repeat with
    both line numbers, as it does for any input.
    """

    __slots__ = ("_path", "keys")

    def __init__(self, path: str) -> None:
        self._path = path
        #: The hashes of the ids seen (`_id_hash`).
        self.keys: set[int] = set()

    def add(self, item_id: str, position: int) -> None:
        """Remember ``item_id`` (of line ``position``); raise `PromptFileError` at a repeat."""
        key = _id_hash(item_id)
        if key not in self.keys:
            self.keys.add(key)
            return
        self.confirm(position)

    def confirm(self, position: int) -> None:
        """An id of line ``position`` hashes as an earlier one's: raise if it is a repeat."""
        for number, _ in numbered_prompts(self._path, format="jsonl"):
            if number >= position:  # the exact reader raised before this line if a repeat
                return


def _id_hash(item_id: str) -> int:
    """An id's hash for `_HashedIds` (a seam: tests make every id collide)."""
    return hash(item_id)


def _is_plain(record: object) -> bool:
    """The usual JSONL record, checked as `_checked` would: a non-empty prompt, an id or none.

    The id a non-empty string; strings only, so orjson's result is exactly the stdlib's (no
    float that could have been an integer beyond 64 bits).
    """
    return (
        type(record) is dict
        and _ID_AND_PROMPT.issuperset(record)
        and type(prompt := record.get("prompt")) is str
        and bool(prompt.strip())
        and ("id" not in record or (type(item_id := record["id"]) is str and item_id != ""))
    )


def _stdin_lines() -> Iterator[str]:
    # Decode stdin as UTF-8 whatever the locale says (prompt files are UTF-8 in practice).
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        return _text_lines(sys.stdin, "<stdin>")
    return _decoded_lines(buffer, "<stdin>")


def _decoded_lines(stream: IO[bytes], name: str) -> Iterator[str]:
    r"""Lines of a binary stream as UTF-8 text (a BOM dropped); a bad byte names its line.

    Decoding stays in C (``TextIOWrapper``): invalid bytes become lone surrogates
    (``surrogateescape``), which valid UTF-8 can never produce, and each non-ASCII line is
    searched for one. Lines end at ``\n``, ``\r\n`` or a lone ``\r`` and keep their ending
    (``newline=""``, what the csv module needs for quoted newlines).
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    return _text_lines(text, name)


def _text_lines(stream: Iterable[str], name: str) -> Iterator[str]:
    """The lines of a decoded stream, refusing a line with bytes that were not UTF-8."""
    number = 0
    lines = iter(stream)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:  # a stream opened without surrogateescape
            raise PromptFileError(
                f"not valid UTF-8 ({exc.reason}); save the file as UTF-8",
                source=name,
                line=number + 1,
            ) from None
        number += 1
        if not line.isascii() and (bad := _ESCAPED_BYTE.search(line)):
            raise _not_utf8(bad, name, number)
        yield line


def _not_utf8(bad: re.Match[str], name: str, number: int) -> PromptFileError:
    return PromptFileError(
        f"not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at column "
        f"{bad.start() + 1}); save the file as UTF-8",
        source=name,
        line=number,
    )


def _read_stream(
    lines: Iterator[str],
    name: str,
    format: PromptFormat,
) -> Iterator[tuple[int, dict[str, Any]]]:
    records = _read_csv(lines, name) if format == "csv" else _read_lines(lines, name, format)
    seen = RepeatedIds()
    for number, record in records:
        item_id = record.get("id")
        if item_id is not None:
            earlier = seen.add(item_id, number)
            if earlier is not None:
                raise _repeated(item_id, earlier, name, number)
        yield number, record


def _first_use(
    seen: _HashedIds | RepeatedIds | None, item_id: str | None, name: str, number: int
) -> None:
    """Remember a record's id (if it has one); raise if an earlier record had it.

    ``seen`` ``None``: ids are not checked.
    """
    if seen is None or item_id is None:
        return
    if (earlier := seen.add(item_id, number)) is not None:
        raise _repeated(item_id, earlier, name, number)


def _repeated(item_id: str, earlier: int, name: str, number: int) -> PromptFileError:
    where = f"on line {earlier}" if earlier >= 0 else "earlier"
    return PromptFileError(
        f"the id {item_id!r} is already used {where}; every id must be unique "
        "(a re-run finds finished items by id)",
        source=name,
        line=number,
    )


def _read_lines(
    lines: Iterator[str],
    name: str,
    format: PromptFormat,
) -> Iterator[tuple[int, dict[str, Any]]]:
    chosen = format
    if chosen == "auto":
        # Peek at the first line with content, then put what was read back in front.
        head: list[str] = []
        for line in lines:
            head.append(line)
            if line.strip() and not _is_comment(line):
                break
        chosen = "jsonl" if head and head[-1].lstrip().startswith("{") else "text"
        lines = itertools.chain(head, lines)
    reader = _jsonl_record if chosen == "jsonl" else _text_record
    # Every line is counted, comments and blank ones too: errors name the line an editor shows.
    for number, line in enumerate(lines, start=1):
        if line.strip() and not _is_comment(line):
            yield number, reader(line, name, number)


def _is_comment(line: str) -> bool:
    """A ``# ...`` line: notes in a prompt file must never be sent (and paid for) as prompts."""
    return line.lstrip().startswith("#")


def _text_record(line: str, _name: str, _number: int) -> dict[str, Any]:
    prompt = line.rstrip()
    stripped = prompt.lstrip()
    if stripped.startswith("\\#"):  # the escape for a prompt that starts with "#"
        prompt = prompt[: len(prompt) - len(stripped)] + stripped[1:]
    return {"prompt": prompt}


def _jsonl_record(line: str, name: str, number: int) -> dict[str, Any]:
    try:
        # orjson when installed, giving exactly what json.loads gives (2.0 -> 0.9 µs a line).
        record = loads(line)
    except ValueError as exc:
        raise PromptFileError(
            f"not valid JSON ({exc}); each line must be one object like "
            '{"prompt": "a red fox", "id": "fox-1"}',
            source=name,
            line=number,
        ) from None
    if not isinstance(record, dict):
        raise PromptFileError(
            f"expected a JSON object with a 'prompt', got {type(record).__name__}",
            source=name,
            line=number,
        )
    return _checked(record, name, number)


def _checked(record: dict[str, Any], name: str, number: int) -> dict[str, Any]:
    """Check one request the way ``generate`` will; return it with ``id`` as a string."""
    plain = _ID_AND_PROMPT.issuperset(record)  # the usual line: checked below, no more
    unknown = [] if plain else sorted(set(record) - _KNOWN_FIELDS)
    if unknown:
        raise PromptFileError(
            f"unknown field(s) {unknown}; known: {sorted(_KNOWN_FIELDS)} "
            "(put undocumented API fields in 'extra_body')",
            source=name,
            line=number,
        )
    if "id" in record:
        item_id = record["id"]
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
            raise PromptFileError(
                f"'id' must be a non-empty string or an integer, got {item_id!r}",
                source=name,
                line=number,
            )
        record["id"] = str(item_id)
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        if "prompt" not in record:
            problem = "no 'prompt'"
        elif isinstance(prompt, str):
            problem = "'prompt' is empty"
        else:
            problem = f"'prompt' must be a string, got {prompt!r}"
        raise PromptFileError(problem, source=name, line=number)
    if plain:  # what `check_generation_fields` checks of a prompt alone was just checked
        return record
    try:
        check_generation_fields({k: v for k, v in record.items() if k != "id"})
    except InvalidInputError as exc:
        raise PromptFileError(str(exc), source=name, line=number) from None
    return record


def _integer(text: str) -> int:
    return int(text)


def _number(text: str) -> float:
    return float(text)


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _image_list(text: str) -> list[str]:
    # Several input images in one cell, separated by ";" (a comma would clash with CSV habits).
    return [part.strip() for part in text.split(";") if part.strip()]


_CSV_CONVERTERS: Mapping[str, Callable[[str], Any]] = {
    "n": _integer,
    "seed": _integer,
    "num_inference_steps": _integer,
    "strength": _number,
    "guidance_scale": _number,
    "kontext_max_mode": _boolean,
    "images": _image_list,
}


def _csv_header(row: list[str], name: str) -> list[str]:
    header = [_CSV_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in row]
    if "prompt" not in header:
        raise PromptFileError(
            f"a CSV prompt file needs a 'prompt' column; the header has {row}",
            source=name,
            line=1,
        )
    allowed = _KNOWN_FIELDS - {"extra_body"}
    unknown = sorted({h for h in header if h and h not in allowed})
    if unknown:
        raise PromptFileError(
            f"unknown column(s) {unknown}; known: {sorted(allowed)} "
            "(use JSONL for other API fields)",
            source=name,
            line=1,
        )
    return header


def _csv_cell(column: str, value: str, name: str, line: int) -> Any:
    converter = _CSV_CONVERTERS.get(column)
    if converter is None:
        return value
    try:
        return converter(value)
    except ValueError:
        kinds: dict[Callable[[str], Any], str] = {
            _integer: "a whole number",
            _boolean: "true or false",
        }
        kind = kinds.get(converter, "a number")
        raise PromptFileError(
            f"column {column!r} must be {kind}, got {value!r}", source=name, line=line
        ) from None


def _read_csv(lines: Iterator[str], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(lines)
    header_row = next(reader, None)
    if header_row is None:
        return
    header = _csv_header(header_row, name)
    line = reader.line_num + 1
    for row in reader:
        if any(cell.strip() for cell in row):
            if len(row) > len(header):
                raise PromptFileError(
                    f"{len(row)} cells but the header has {len(header)} columns "
                    "(quote cells that contain commas)",
                    source=name,
                    line=line,
                )
            record = {
                column: _csv_cell(column, cell.strip(), name, line)
                for column, cell in zip(header, row, strict=False)
                if column and cell.strip()
            }
            yield line, _checked(record, name, line)
        line = reader.line_num + 1
