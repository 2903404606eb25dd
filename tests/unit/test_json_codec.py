"""The database's JSON codec: ids read back from PostgreSQL become strings; any other object it does not know
is an error, never its str() (an Appointment passed where its as_dict() belongs would be stored as text)."""
import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID

from domain.appointment import FIELDS, Appointment
from services.store.pool import _json_out, _jsonb_out


def test_an_id_read_back_from_postgresql_is_written_as_its_string():
    pg_id = PgUUID("12345678-1234-5678-1234-567812345678")
    assert orjson.loads(_jsonb_out({"org": pg_id})[1:]) == {"org": "12345678-1234-5678-1234-567812345678"}
    assert orjson.loads(_json_out([pg_id])) == ["12345678-1234-5678-1234-567812345678"]


def test_a_record_object_is_refused_and_its_dict_goes_through():
    record = Appointment.from_dict({name: None for name in FIELDS} | {"appointment_id": "appt_1", "version": 1})
    with pytest.raises(TypeError):
        _jsonb_out({"appointment": record})
    assert orjson.loads(_jsonb_out({"appointment": record.as_dict()})[1:])["appointment"]["appointment_id"] == "appt_1"
    assert record.changed("2026-11-23T00:00:00Z", status="cancelled").as_dict()["version"] == 2
