"""The hot paths' shortcuts hold to what they shortcut: a Kafka result body to its model, a stored result
leaving out only the record its event holds, the screen of decoded JSON to the full walk, and the producer's
partitioning to Kafka's default partitioner."""
import json
import os
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2 as aiokafka_murmur2

from domain.events import AppointmentBooked, AppointmentStatusChanged
from schemas.kafka import CommandResult
from schemas.text import BadInput, check_decoded, check_json
from services.command_results import pending
from services.ingestor import DeadLetter, decode
from services.outcome import Meta, written
from services.produce import murmur2, partition_of


@pytest.mark.parametrize("idempotent", [False, True])
@pytest.mark.parametrize("position", [None, 42])
def test_a_success_body_is_what_the_model_makes_of_it(idempotent, position):
    command_id = uuid.uuid4()
    data = {"appointment_id": "appt_1", "token": 3, "notes": None, "follow_up_required": False,
            "position": position}
    body = CommandResult.ok_body(command_id, 201, data, position, idempotent)
    assert json.loads(json.dumps(body)) == body
    model = CommandResult.model_validate(body)
    assert model.ok and model.command_id == command_id and model.position == position
    assert model.as_json() == body


RECORD = {"appointment_id": "appt_1", "status": "confirmed", "token": 3, "notes": None, "tags": ["a"]}


@pytest.mark.parametrize("data, riding, left_out", [
    (RECORD, AppointmentBooked(appointment=RECORD), True),
    (dict(RECORD), AppointmentBooked(appointment=dict(RECORD)), True),  # equal, not the same objects
    ({**RECORD, "notes": "changed"}, AppointmentBooked(appointment=RECORD), False),
    ({**RECORD, "tags": ["b"]}, AppointmentBooked(appointment=RECORD), False),
    ({**RECORD, "extra": None}, AppointmentBooked(appointment=RECORD), False),
    ({k: v for k, v in RECORD.items() if k != "token"}, AppointmentBooked(appointment=RECORD), False),
    (RECORD, AppointmentStatusChanged("appt_1", "cancelled", "confirmed", {}, "2026-01-01T00:00:00Z"), False),
    (RECORD, None, False),
])
def test_a_stored_result_leaves_out_only_the_record_its_event_holds(data, riding, left_out):
    command_id = str(uuid.uuid4())
    result = pending(Meta(command_id=command_id), written(201, data, None), 7, riding)
    assert result.result == CommandResult.ok_body(command_id, 201, {**data, "position": None}, None)  # as answered
    assert result.data_in_event is left_out
    assert result.stored == ({k: v for k, v in result.result.items() if k != "data"} if left_out else result.result)


def test_a_command_without_an_id_stores_no_result():
    assert pending(Meta(request_id="req_1"), written(201, RECORD, None), 7, AppointmentBooked(appointment=RECORD)) \
        is None


BAD = [
    b'{"a": "\\u0000"}',                     # NUL through an escape
    '{"a": "\\ud800"}'.encode(),              # a lone surrogate through an escape
    b'{"a": "\xed\xa0\x80"}',                 # a lone surrogate as raw bytes (json.loads lets it through)
    b"[" * 34 + b"]" * 34,                    # too deep
    b'{"\\u0000": 1}',                        # a bad field name
]
GOOD = [b'{"a": "ok", "b": [1, {"c": "\xed\x9e\xa3"}]}', b'{"a": "caf\\u00e9"}', b"[" * 33 + b"]" * 33]


@pytest.mark.parametrize("raw", BAD + GOOD)
def test_the_screen_refuses_exactly_what_the_walk_refuses(raw):
    value = json.loads(raw)

    def verdict(check) -> str | None:
        try:
            check()
        except BadInput as exc:
            return str(exc)
        return None

    walked = verdict(lambda: check_json(value))
    assert verdict(lambda: check_decoded(raw, value)) == walked
    assert verdict(lambda: check_decoded(raw.decode("utf-8", "surrogatepass"), value)) == walked
    assert (walked is None) == (raw in GOOD)


# Kafka's UtilsTest.testMurmur2 (the Java client's values, signed)
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}


def test_murmur2_is_the_java_clients():
    assert {key: murmur2(key) - (murmur2(key) >> 31 << 32) for key in JAVA_MURMUR2} == JAVA_MURMUR2


def test_messages_land_on_the_partition_kafkas_default_partitioner_picks():
    keys = [os.urandom(n) for n in range(64) for _ in range(50)] + [b"appt_0123456789", str(uuid.uuid4()).encode()]
    assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]
    for count in (1, 4, 7):
        partitions = list(range(count))
        assert [partition_of(k, partitions) for k in keys] == [DefaultPartitioner()(k, partitions, partitions)
                                                                for k in keys]


@pytest.mark.parametrize("raw", BAD)
def test_a_message_the_screen_refuses_is_a_dead_letter_whichever_parser_reads_it(raw):
    # orjson reads most messages and refuses a lone surrogate itself; json reads what orjson refuses
    dead = decode(raw)
    # a surrogate's UTF-8 bytes are not UTF-8 to the strict decoder; the others are read and then screened
    expected = "undecodable" if b"\xed\xa0" in raw else "schema_invalid"
    assert isinstance(dead, DeadLetter) and dead.reason == expected, dead


@pytest.mark.parametrize("raw, reason", [(b"\xff{}", "undecodable"), (b'{"a": NaN', "invalid_json"),
                                         (b'\xef\xbb\xbf{"a": 1}', "invalid_json")])
def test_what_neither_parser_reads_is_told_apart(raw, reason):
    assert decode(raw).reason == reason
