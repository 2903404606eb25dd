"""A refusal kept as one of a batch's answers does not keep the batch alive: reference counting alone frees
the batch once it is done, without waiting for the cycle collector (which, for a batch of window-days and
records, means long pauses)."""
from __future__ import annotations

import gc
import weakref

import pytest

from domain.errors import DomainError


class Batch:
    def __init__(self) -> None:
        self.answers: list[DomainError] = []


def decide(batch: Batch, keep: bool) -> None:
    for _ in range(3):
        try:
            raise DomainError("SLOT_FULL", "the window is full")
        except DomainError as exc:
            batch.answers.append(exc.kept() if keep else exc)


def a_finished_batch(keep: bool) -> weakref.ref:
    batch = Batch()
    decide(batch, keep)
    for answer in batch.answers:
        assert answer.code == "SLOT_FULL" and answer.status == 409  # kept, the refusal still says what it was
    return weakref.ref(batch)


@pytest.mark.parametrize("keep, freed", [(True, True), (False, False)], ids=["kept", "as-caught"])
def test_a_batch_whose_refusals_are_kept_is_freed_when_done(keep, freed):
    gc.disable()
    try:
        batch = a_finished_batch(keep)
        # As caught, the refusal's traceback holds decide()'s frame, whose locals hold the batch: a cycle.
        assert (batch() is None) is freed
    finally:
        gc.enable()
        gc.collect()
