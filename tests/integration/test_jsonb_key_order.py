"""Records are written with their keys in the order PostgreSQL's jsonb keeps them (domain.json_keys), so the
server finds each object sorted and need not sort it: what a record's JSON says and what jsonb gives back
list the same keys in the same order, names of every length and non-ASCII ones included."""
import orjson

from domain.appointment import FIELDS, Appointment
from domain.json_keys import jsonb_order


async def test_a_record_as_written_is_in_the_order_jsonb_keeps(pool):
    record = Appointment.from_dict({name: f"v-{name}" for name in FIELDS} | {"version": 1}).as_dict()
    odd = {name: n for n, name in enumerate(["zz", "a", "ä", "b", "é", "aa", "ab", "Z", "bä", "z", "ā", "ba"])}
    async with pool.acquire() as conn:
        for written in (record, {name: odd[name] for name in jsonb_order(odd)}):
            kept = orjson.loads(await conn.fetchval("SELECT $1::text::jsonb::text", orjson.dumps(written).decode()))
            assert list(kept) == list(written)
            assert kept == written
