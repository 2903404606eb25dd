"""What every request must be before any handler sees it (DESIGN §4, bad input): text that PostgreSQL and
JSON can carry (no NUL, no lone surrogate, valid UTF-8) in the path, the query, the headers we read and the
body; JSON nested no deeper than 32. Each failure is a 400 VALIDATION_ERROR naming where it was."""
from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from domain.errors import DomainError

MAX_DEPTH = 32
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8 text"
    return None


def _refuse(where: str, problem: str) -> DomainError:
    return DomainError("VALIDATION_ERROR", f"{where} {problem}", {where: problem})


def check_target(request: web.Request) -> None:
    """The path and every query parameter."""
    problem = text_problem(request.path)
    if problem:
        raise _refuse("path", problem)
    for name, value in request.query.items():
        problem = text_problem(name) or text_problem(value)
        if problem:
            raise _refuse(name if text_problem(name) is None else "query", problem)


def request_id(request: web.Request) -> str | None:
    """The caller's X-Request-ID if it is a sane token (it is echoed and logged), else None."""
    given = request.headers.get("X-Request-ID")
    return given if given is not None and _REQUEST_ID.match(given) else None


def check_json(value: Any, where: str = "body", depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise _refuse("body", f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise _refuse(where, problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key)
            if problem:
                raise _refuse("body", f"has a field name that {problem.replace('must', 'does not')}")
            check_json(item, key if where == "body" else f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check_json(item, f"{where}[{n}]", depth + 1)


def parse_json(raw: bytes) -> Any:
    """A JSON object from the body's bytes, or a 400 saying what is wrong with it."""
    if not raw:
        raise DomainError("VALIDATION_ERROR", "a JSON body is required", {"body": "is required"})
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _refuse("body", f"is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise DomainError("VALIDATION_ERROR", "the body is not valid JSON", {"body": "is not valid JSON"}) from None
    if not isinstance(body, dict):
        raise DomainError("VALIDATION_ERROR", "the body must be a JSON object", {"body": "must be an object"})
    check_json(body)
    return body
