"""What every request must be before any handler sees it (DESIGN §4, bad input; the rules are in
schemas/text.py): in the path, the query, the headers we read and the body. Each failure is a 400
VALIDATION_ERROR naming where it was."""
from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from domain.errors import DomainError
from schemas.text import MAX_DEPTH, BadInput, check_decoded, text_problem

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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
    try:
        check_decoded(raw, body)
    except BadInput as exc:
        raise _refuse(exc.where, exc.problem) from None
    return body
