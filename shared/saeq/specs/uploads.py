"""The format of an uploaded corpus: a UTF-8 `.txt` file (documents separated by blank lines) or a
`.jsonl` file (one JSON object per line, its text in `text_field`). The API checks an upload against
it as the upload arrives; a harvest (saeq.ml.corpus) reads the stored file with the same parser.
Standard library only, so the API checks uploads without the ML core.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Iterator
from typing import BinaryIO

UPLOAD_SUFFIXES = (".txt", ".jsonl")


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class UploadError(ValueError):
    """An uploaded file that is not a corpus. `field` is "text_field" when that field is at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def validate_upload(filename: str, data: bytes | BinaryIO, text_field: str) -> int:
    """Number of documents in an uploaded file, read line by line (a file object is never held
    whole); ValueError saying what is wrong and on which line."""
    if filename.endswith(".txt"):
        n, in_doc = 0, False  # count blocks without keeping their text
        for _, line in _upload_lines(filename, data):
            if _BLANK_LINE.fullmatch(line):
                in_doc = False
            elif not in_doc and line.strip():
                n, in_doc = n + 1, True
    else:
        n = sum(1 for _ in parse_upload(filename, data, text_field))
    if n == 0:
        raise UploadError(f"{filename}: no documents found")
    return n


def parse_upload(
    filename: str, data: bytes | BinaryIO, text_field: str
) -> Iterator[tuple[str, str | None, str | None]]:
    """(text, title, topic) per non-empty document of a .txt (blank-line separated) or .jsonl file."""
    lines = _upload_lines(filename, data)
    if filename.endswith(".txt"):
        block: list[str] = []
        for _, line in itertools.chain(lines, [(0, "")]):  # a blank line after the last ends it
            if not _BLANK_LINE.fullmatch(line):
                block.append(line)
                continue
            if doc := "\n".join(block).strip():
                yield doc, None, None
            block = []
        return
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UploadError(f"{filename}: line {lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:  # Python's JSON parser recurses once per level of nesting
            raise UploadError(f"{filename}: line {lineno}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise UploadError(f"{filename}: line {lineno}: expected a JSON object")
        if not isinstance(row.get(text_field), str):
            raise UploadError(f"{filename}: line {lineno}: no string field {text_field!r}", field="text_field")
        if row[text_field].strip():
            yield row[text_field], _opt_str(row.get("title")), _opt_str(row.get("topic"))


_BLANK_LINE = re.compile(r"[ \t]*")


def _upload_lines(filename: str, data: bytes | BinaryIO) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) of a UTF-8 file, one line in memory at a time."""
    if not filename.endswith(UPLOAD_SUFFIXES):
        raise UploadError(f"{filename}: expected a {' or '.join(UPLOAD_SUFFIXES)} file")
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    for lineno, raw in enumerate(f, start=1):
        if b"\x00" in raw:
            raise UploadError(f"{filename}: line {lineno}: binary content (NUL byte); expected UTF-8 text")
        try:  # a line ending never splits a UTF-8 character, so lines decode on their own
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UploadError(f"{filename}: line {lineno}: not UTF-8 text ({e.reason})") from None
        yield lineno, line.removesuffix("\n").removesuffix("\r")
