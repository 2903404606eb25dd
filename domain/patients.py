"""Patients and phones (DESIGN §3, §10).

A phone is compared in E.164 form, parsed with `phonenumbers`; a national number needs the org's
`phone_region` (`09840000001` is `+919840000001` in IN). A patient is one (org, phone, name): a parent's phone
may serve several children, each their own patient. Patient ids are derived from that identity, so the same
patient gets the same id on every booking and on every rebuild, in any process, without a lookup.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections import OrderedDict
from typing import TYPE_CHECKING

import phonenumbers

if TYPE_CHECKING:
    from domain.events import AppointmentBooked, PatientRegistered

_SEPARATORS = re.compile(r"[\s\-().]")


_LEARNT: OrderedDict[str, str] = OrderedDict()  # "+<digit>…" phone as sent → its key, as a booking recorded it
_LEARNT_MAX = 65536


def phone_key(phone: str, region: str | None = None) -> str:
    """The phone as compared: E.164 when it parses as a possible number, else its characters without
    separators (an unparseable number still matches itself however it is spaced)."""
    learnt = _LEARNT.get(phone)
    return learnt if learnt is not None else _parsed_key(phone, region)


def learn(phone: str, key: str) -> None:
    """What a booking recorded as its phone's key (AppointmentBooked.phone_e164), kept so that loading a
    window-day from the log does not parse every phone in it again. Only a phone written with its country code
    ("+" and a digit other than 0), whose key does not depend on the org's region."""
    if phone[:1] == "+" and phone[1:2] in _COUNTRY_DIGITS and phone not in _LEARNT:
        if len(_LEARNT) >= _LEARNT_MAX:
            _LEARNT.popitem(last=False)  # the oldest (O(1); deleting a plain dict's first key is not)
        _LEARNT[phone] = key


_COUNTRY_DIGITS = frozenset("123456789")


@functools.lru_cache(maxsize=65536)  # parsing costs tens of microseconds; a day's phones repeat
def _parsed_key(phone: str, region: str | None) -> str:
    try:
        number = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return _SEPARATORS.sub("", phone).casefold()


def name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def patient_id(org_id: str, phone: str, name: str, region: str | None = None) -> str:
    """`pat_` + 10 lowercase letters and digits, stable for one org, phone (E.164) and name (case and spaces
    ignored)."""
    digest = hashlib.sha256(f"{org_id}|{phone_key(phone, region)}|{name_key(name)}".encode()).digest()
    return "pat_" + base64.b32encode(digest[:10]).decode()[:10].lower()  # the first 80 bits make these 10


def registration(booked: "AppointmentBooked") -> "PatientRegistered":
    """The patient a booking names, as registered on their own stream the first time the log sees them."""
    from domain.events import PatientRegistered

    record = booked.appointment
    return PatientRegistered(patient_id=record["patient_id"], phone_e164=booked.phone_e164,
                             patient_name=record["patient_name"], parent_phone=record["parent_phone"])


def stream_of(patient: str) -> str:
    return f"patient-{patient}"


def valid_region(region: str) -> bool:
    return region in phonenumbers.SUPPORTED_REGIONS
