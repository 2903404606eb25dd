"""The relay's messages are the stored events' CloudEvents: the data it splices in unparsed, and the fields
PostgreSQL picks out of data and metadata for it, say what the events themselves say."""
import json
import uuid

from services.relay import cloud_event, message
from services.store.eventstore import START, Append, NewEvent


async def test_each_relayed_message_is_its_stored_events_cloud_event_keyed_by_its_subject(store, pool):
    org = uuid.uuid4()
    booked = {"appointment": {"appointment_id": "appt_0000000001", "patient_name": "Zoë \"Z\" Ödegaard",
                              "notes": None, "token": 7, "follow_up_required": False}, "phone_e164": "+15550001111"}
    await store.append([
        Append("wd-w1-2026-12-01", 0, [
            NewEvent("appointment.booked", booked, metadata={"command_id": "c-1", "actor": "kafka"}),
            NewEvent("appointment.status_changed", {"appointment_id": "appt_0000000001", "status": "cancelled",
                                                    "updated_at": "2026-11-23T10:00:00Z", "changes": {}},
                     metadata={"request_id": "req-9"})], org_id=org),
        Append("org-1", 0, [NewEvent("org.settings_changed", {"changes": {"timezone": "UTC", "nested": [1, {}]}},
                                     schema_version=1)], org_id=org),
        Append("patient-pat_abc", 0, [NewEvent("patient.registered", {"patient_id": "pat_abc"})]),
    ])
    stored = await store.read_log(START)
    async with pool.acquire() as conn:
        rows = await store.publish_log(START, 100, conn)
    assert [r["global_position"] for r in rows] == [e.position for e in stored]
    keys = []
    for row, event in zip(rows, stored):
        key, value = message(row)
        body = json.loads(value)
        assert body == json.loads(json.dumps(cloud_event(event), default=str))
        assert key.decode() == body["subject"]
        keys.append(key.decode())
    assert keys == ["appt_0000000001", "appt_0000000001", "org-1", "patient-pat_abc"]
    first = json.loads(message(rows[0])[1])
    assert first["commandid"] == "c-1" and "requestid" not in first
    assert first["data"]["appointment"]["patient_name"] == "Zoë \"Z\" Ödegaard"
    assert json.loads(message(rows[1])[1])["requestid"] == "req-9"
    assert json.loads(message(rows[2])[1])["orgid"] == str(org)
    assert json.loads(message(rows[3])[1])["orgid"] is None
