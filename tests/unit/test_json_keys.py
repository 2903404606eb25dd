"""An appointment's JSON lists its keys in jsonb's order and reads back as the same record."""
from domain.appointment import FIELDS, Appointment
from domain.json_keys import jsonb_key


def test_a_record_as_json_is_in_jsonb_order_and_reads_back_whole():
    record = Appointment.from_dict({name: f"v-{name}" for name in FIELDS} | {"version": 3, "token": 7})
    as_json = record.as_dict()
    assert list(as_json) == sorted(FIELDS, key=jsonb_key)
    assert list(as_json)[:3] == ["date", "batch", "notes"]
    assert as_json == {name: getattr(record, name) for name in FIELDS}
    assert Appointment.from_dict(as_json) == record
