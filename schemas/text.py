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
