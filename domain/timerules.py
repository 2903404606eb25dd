"""Time: appointment dates are instants; windows are wall-clock times in the org's timezone."""
from __future__ import annotations

import functools
import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.errors import validation

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HAS_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


YEARS = (2000, 2199)  # DESIGN §4: dates outside are refused (and stay far from datetime's own limits)
DAY_FORM = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_instant(value: str, field: str = "appointment_date") -> datetime:
    """ISO 8601 with a time part; `Z` or an offset; no offset means UTC."""
    if not isinstance(value, str) or not _HAS_TIME.match(value):
        raise validation(field, "must be an ISO 8601 datetime with a time part, e.g. 2026-06-15T09:30:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise validation(field, "is not a valid ISO 8601 datetime") from None
    if not YEARS[0] <= parsed.year <= YEARS[1]:
        raise validation(field, f"must be between years {YEARS[0]} and {YEARS[1]}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


@functools.lru_cache(maxsize=4096)  # a batch's `now` and a window's slot starts come back on every booking
def iso_utc(moment: datetime) -> str:
    """The seeds' format: 2026-06-15T09:30:00.000Z."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" → "Z"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise validation("timezone", f"'{name}' is not an IANA timezone") from None


def local(moment: datetime, tz: str) -> datetime:
    return moment.astimezone(zone(tz))


_HHMM: dict[str, time] = {}  # windows' times are parsed on every placement: a few distinct strings


def parse_hhmm(value: str, field: str) -> time:
    parsed = _HHMM.get(value) if isinstance(value, str) else None
    if parsed is not None:
        return parsed
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise validation(field, "must be HH:MM (24-hour)")
    parsed = time(int(value[:2]), int(value[3:]))
    if len(_HHMM) < 4096:
        _HHMM[value] = parsed
    return parsed


def parse_day(value: str, field: str = "date") -> date:
    """YYYY-MM-DD only: Python's own parser also takes 20261202 and 2026-W48-3, which name other strings."""
    try:
        if not DAY_FORM.match(value):
            raise ValueError
        day = date.fromisoformat(value)
    except (TypeError, ValueError):
        raise validation(field, "must be a date YYYY-MM-DD") from None
    if not YEARS[0] <= day.year <= YEARS[1]:
        raise validation(field, f"must be between years {YEARS[0]} and {YEARS[1]}")
    return day


def at_local(day: date, wall: time, tz: str) -> datetime:
    """The instant a wall-clock time on a local date names (the earlier one when a DST fold repeats it)."""
    return datetime.combine(day, wall, tzinfo=zone(tz)).astimezone(timezone.utc)


def days_between(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]
