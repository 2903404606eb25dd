"""The failed-authentication limiter (DESIGN §4): a client is refused once it failed too often inside the
window, and only then; it is forgiven once its failures leave the window."""
import time

import pytest

from domain.errors import DomainError
from services.gateway.guard import FailedAuthLimiter


@pytest.fixture
def clock(monkeypatch):
    """time.time, moved by hand: the clock of limits' memory storage, which keeps the failures."""
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


def refused(limiter: FailedAuthLimiter, client: str) -> DomainError | None:
    try:
        limiter.check(client)
    except DomainError as exc:
        return exc
    return None


def test_a_client_is_refused_at_the_limit_and_no_other_is(clock):
    limiter = FailedAuthLimiter(per_minute=3)
    for _ in range(2):
        assert refused(limiter, "10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock[0] += 1
    assert refused(limiter, "10.0.0.1") is None  # two failures of three allowed
    limiter.failed("10.0.0.1")
    exc = refused(limiter, "10.0.0.1")
    assert exc is not None and exc.code == "RATE_LIMITED" and exc.status == 429
    assert 1 <= int(exc.headers["Retry-After"]) <= 60
    assert refused(limiter, "10.0.0.2") is None  # another address is not held to the first one's failures


def test_a_client_is_forgiven_once_its_failures_leave_the_window(clock):
    limiter = FailedAuthLimiter(per_minute=2)
    limiter.failed("10.0.0.1")
    clock[0] += 30
    limiter.failed("10.0.0.1")
    assert refused(limiter, "10.0.0.1") is not None
    clock[0] += 31  # the first failure has left the window, the second has not
    assert refused(limiter, "10.0.0.1") is None
    limiter.failed("10.0.0.1")  # back at the limit within the window
    assert refused(limiter, "10.0.0.1") is not None
    clock[0] += 60
    assert refused(limiter, "10.0.0.1") is None

