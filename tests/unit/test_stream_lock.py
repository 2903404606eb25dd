"""A stream's in-process lock: those waiting behind a holder the database failed are told at once, not sent to
wait out the same stall with a statement of their own; otherwise it is a plain lock."""
import asyncio

import pytest

from services.unit_of_work import StreamLock


async def _waiter(lock: StreamLock, entered: list[str], name: str) -> None:
    async with lock:
        entered.append(name)


async def test_those_waiting_behind_a_holder_the_database_failed_are_told_at_once():
    lock, entered = StreamLock(), []
    with pytest.raises(TimeoutError):
        async with lock:
            waiting = [asyncio.create_task(_waiter(lock, entered, n)) for n in ("a", "b")]
            await asyncio.sleep(0)  # both queued behind the holder
            raise TimeoutError  # its statement went unanswered
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(r) for r in results] == [TimeoutError, TimeoutError] and entered == []
    await _waiter(lock, entered, "later")  # who comes after tries the database afresh
    assert entered == ["later"]


async def test_a_holder_leaving_otherwise_lets_the_next_in_turn():
    lock, entered = StreamLock(), []
    with pytest.raises(ValueError):  # a refusal or a bug, not the database
        async with lock:
            waiting = [asyncio.create_task(_waiter(lock, entered, n)) for n in ("a", "b")]
            await asyncio.sleep(0)
            raise ValueError
    await asyncio.gather(*waiting)
    assert entered == ["a", "b"]
