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
from phonenumbers import phonenumberutil
from phonenumbers.phonemetadata import PhoneMetadata

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
    number = _international(phone)
    return _key(phone, _parsed(phone, region) if number is None else number)


def _parsed(phone: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return None


def _key(phone: str, number: phonenumbers.PhoneNumber | None) -> str:
    """The phone's key from what parsing made of it."""
    if number is not None and phonenumbers.is_possible_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return _SEPARATORS.sub("", phone).casefold()


_LENGTH_KEEPS_PREFIX = (phonenumberutil.ValidationResult.TOO_SHORT, phonenumberutil.ValidationResult.INVALID_LENGTH,
                        phonenumberutil.ValidationResult.IS_POSSIBLE_LOCAL_ONLY)


def _international(phone: str) -> phonenumbers.PhoneNumber | None:
    """What `phonenumbers.parse` makes of "+" and ASCII digits (the form callers and imports mostly send), by
    parse's own steps for that form, or None for anything else (parse then decides). parse spends ~30 µs a
    number on the text it must tolerate (RFC 3966, extensions, vanity letters, Unicode digits, an IDD); this takes
    ~5, on every create whose phone the cache has not seen. The region plays no part: after a "+", parse reads
    the country code from the number. tests/unit/test_phones.py holds it equal to parse on random numbers of
    every country code; it uses phonenumbers' internal steps, which that test checks on every upgrade."""
    digits = phone[1:]
    if phone[:1] != "+" or not (phonenumberutil._MIN_LENGTH_FOR_NSN < len(digits) < phonenumberutil._MAX_INPUT_STRING_LENGTH
                                and digits.isascii() and digits.isdigit()):
        return None
    country_code, national = phonenumberutil._extract_country_code(digits)
    if country_code == 0 or len(national) < phonenumberutil._MIN_LENGTH_FOR_NSN:
        return None  # parse's errors, or its second reading of the digits in the default region
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, phonenumbers.region_code_for_country_code(country_code))
    _, without_prefix, _ = phonenumberutil._maybe_strip_national_prefix_carrier_code(national, metadata)
    if phonenumberutil._test_number_length(without_prefix, metadata) not in _LENGTH_KEEPS_PREFIX:
        national = without_prefix
    if not phonenumberutil._MIN_LENGTH_FOR_NSN <= len(national) <= phonenumberutil._MAX_LENGTH_FOR_NSN:
        return None
    number = phonenumbers.PhoneNumber(country_code=country_code)
    phonenumberutil._set_italian_leading_zeros_for_phone_number(national, number)
    number.national_number = int(national)
    return number


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
