"""What a command did, and who asked: plain data shared by the handler, the batcher and the entry points."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    """The HTTP-equivalent status, the record the caller is answered with, and the log position of its last
    event (None when nothing was written)."""
    status: int
    data: Any
    position: int | None = None
    idempotent: bool = False


def written(status: int, record: dict[str, Any], position: int | None, idempotent: bool = False) -> Outcome:
    """An appointment write's outcome: the record as it is now, with the log position of the write."""
    return Outcome(status, {**record, "position": position}, position, idempotent)


@dataclass
class Meta:
    """Who asked and why: recorded on every event the command appends."""
    request_id: str | None = None
    command_id: str | None = None
    actor: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}
