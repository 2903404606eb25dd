"""The "+digits" reading of a phone (domain.patients._international) against phonenumbers.parse itself."""
from __future__ import annotations

import random

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import patients

COUNTRY_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
REGIONS = [None, *sorted(phonenumbers.SUPPORTED_REGIONS)]


def assert_reads_as_parse(phone: str, region: str | None) -> None:
    by_parse = patients._parsed(phone, region)  # phonenumbers.parse alone
    fast = patients._international(phone)
    assert fast is None or fast == by_parse, phone
    assert patients._parsed_key.__wrapped__(phone, region) == patients._key(phone, by_parse), phone


phones = st.builds(lambda code, rest: f"+{code}{rest}",
                   st.one_of(st.sampled_from(COUNTRY_CODES), st.integers(0, 999)),
                   st.text("0123456789", max_size=18))


@settings(max_examples=3000, deadline=None)
@given(phones, st.sampled_from(REGIONS))
def test_a_plus_and_digits_phone_reads_as_phonenumbers_parse_reads_it(phone, region):
    assert_reads_as_parse(phone, region)


def test_every_country_code_at_every_length_reads_as_parse():
    rng = random.Random(14)
    for code in COUNTRY_CODES:
        for length in range(0, 18):
            for _ in range(3):
                rest = "".join(rng.choice("0123456789") for _ in range(length))
                assert_reads_as_parse(f"+{code}{rest}", rng.choice(REGIONS))


def test_the_fast_reading_is_taken_for_international_numbers_and_only_for_them():
    assert patients._international("+919840000001") == phonenumbers.parse("+919840000001")
    # a national prefix after the country code goes, as parse drops it; Italy's leading zero stays
    assert patients._parsed_key.__wrapped__("+4402079460000", None) == "+442079460000"
    assert patients._parsed_key.__wrapped__("+390612345678", None) == "+390612345678"
    for other in ("+91 98400 00001", "09840000001", "+0044 20 7946 0958", "+٩١٩٨٤٠٠٠٠٠٠١", "+91", "tel:+919840000001"):
        assert patients._international(other) is None, other
