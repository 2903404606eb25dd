"""Text and JSON any boundary must refuse before it reaches PostgreSQL or a JSON encoder (DESIGN §4): NUL
characters, lone surrogates (not UTF-8), and nesting deeper than 32. Used on HTTP bodies, paths, queries and
headers, and on Kafka commands."""
from __future__ import annotations

from typing import Any

MAX_DEPTH = 32


class BadInput(ValueError):
    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")
        self.where = where
        self.problem = problem


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8 text"
    return None


def check_json(value: Any, where: str = "body", depth: int = 0) -> None:
    """Raise BadInput naming the first field whose text is bad, or the body if it nests too deep."""
    if depth > MAX_DEPTH:
        raise BadInput("body", f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise BadInput(where, problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            if text_problem(key):
                raise BadInput("body", "has a field name that is not valid text")
            check_json(item, key if where == "body" else f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check_json(item, f"{where}[{n}]", depth + 1)


def check_decoded(raw: str | bytes, value: Any, where: str = "body") -> None:
    """check_json for a value just decoded from JSON text `raw`, walking it only when the text could hold a
    problem: a NUL or a lone surrogate reaches a decoded string only through a \\u escape (raw NUL is not
    valid JSON), or, from bytes (json.loads decodes them with surrogatepass), as the UTF-8 lead byte 0xED; and
    nesting deeper than MAX_DEPTH needs more than MAX_DEPTH brackets."""
    if isinstance(raw, bytes):
        escaped, brackets = b"\\u" in raw or b"\xed" in raw, raw.count(b"{") + raw.count(b"[")
    else:  # text decoded leniently may hold a lone surrogate outright
        escaped, brackets = "\\u" in raw or text_problem(raw) is not None, raw.count("{") + raw.count("[")
    if escaped or brackets > MAX_DEPTH:
        check_json(value, where)
