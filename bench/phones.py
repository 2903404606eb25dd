"""What a phone's key costs when the cache has not seen it (every create from a new caller), by
phonenumbers.parse alone and by the "+digits" reading that skips parse's generic text handling.

  python -m bench.phones
"""
from __future__ import annotations

import time

from domain import patients


def _by_parse(phone: str) -> str:
    return patients._key(phone, patients._parsed(phone, None))


def _per_phone_us(key, phones: list[str]) -> float:
    started = time.perf_counter()
    for phone in phones:
        key(phone)
    return 1e6 * (time.perf_counter() - started) / len(phones)


def main(count: int = 20_000) -> None:
    phones = [f"+49{n:011d}" for n in range(count)] + [f"+91984{n:07d}" for n in range(count)]
    uncached = patients._parsed_key.__wrapped__
    for _ in range(2):  # the second round is the one reported: imports and metadata loaded
        parse, fast = _per_phone_us(_by_parse, phones), _per_phone_us(lambda p: uncached(p, None), phones)
    print(f"phone key, {len(phones):,} distinct +digits phones: phonenumbers.parse {parse:.1f} µs, "
          f"+digits reading {fast:.1f} µs per phone")


if __name__ == "__main__":
    main()
