"""Which projectors exist, and how each runs.

Inline projectors write their rows in the transaction (or the very statement) of the events, so every read
the API serves reflects every write acknowledged before it (DESIGN §2). Asynchronous ones follow the log
from a checkpoint; no API answer may depend on them. Both are rebuilt from the log the same way.
"""
from __future__ import annotations

from projections.appointments import AppointmentsProjector
from projections.base import Projector
from projections.holds import HoldsProjector
from projections.schedule import ScheduleProjector

INLINE: tuple[Projector, ...] = (AppointmentsProjector(), ScheduleProjector(), HoldsProjector())
ASYNCHRONOUS: tuple[Projector, ...] = ()


def all_projectors() -> list[Projector]:
    return [*INLINE, *ASYNCHRONOUS]
