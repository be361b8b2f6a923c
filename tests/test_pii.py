"""PII scrubbing: each type found and each look-alike left alone, the replacement modes, counts,
idempotence and "no original PII survives" as properties over generated texts, and precision and
recall on the labelled texts of ../shared/data/pii."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import iban as stdnum_iban
from stdnum import luhn

from tasks.pii import PII_TYPES, REDACTED, PiiScrubber, Span, evaluate, format_table
from tests.conftest import shared

SCRUB = PiiScrubber()


def found(text: str, scrubber: PiiScrubber = SCRUB) -> list[tuple[str, str]]:
    return [(s.type, s.value) for s in scrubber.find(text)]


# --- each type: found, and look-alikes kept -----------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("Write to jane.doe+news@example.co.uk today", "jane.doe+news@example.co.uk"),
    ("mail: a_b-c@mail-server.example.org.", "a_b-c@mail-server.example.org"),  # trailing dot stays
    ("<John.Smith@Example.COM>", "John.Smith@Example.COM"),
    ("联系邮箱pillgoo9@gmail.com으로", "pillgoo9@gmail.com"),  # glued to CJK words
    ("user@bücher.de", "user@bücher.de"),
])
def test_email_found(text, value):
    assert found(text) == [("email", value)]


@pytest.mark.parametrize("text", [
    "twitter handle @jane and price 5 @ 10.00",
    "user@localhost has no domain",
    "a@b.c is too short a TLD",
    "foo@.com and @example.com",
    "x" * 100 + "@example.com",  # a local part over 64 characters
])
def test_email_look_alikes_kept(text):
    assert [t for t, _ in found(text)].count("email") == 0


@pytest.mark.parametrize("text, value", [
    ("blocked 172.61.42.192 again", "172.61.42.192"),  # 172.61 is outside 172.16/12
    ("DNS 8.8.8.8.", "8.8.8.8"),
    ("from (1.1.1.1:53)", "1.1.1.1"),
    ("v6 2001:4860:4860::8888, fine", "2001:4860:4860::8888"),
    ("at 2600::1 now", "2600::1"),
    ("IP:203.0.114.7", "203.0.114.7"),
])
def test_public_ip_found(text, value):
    assert found(text) == [("ip", value)]


@pytest.mark.parametrize("address", [
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.1.1", "100.64.0.1",
    "224.0.0.1", "240.0.0.1", "0.0.0.0", "255.255.255.255", "192.0.2.1",  # documentation
    "::1", "::", "fe80::1", "fc00::1", "2001:db8::1", "ff02::1",
])
def test_private_and_special_ips_kept(address):
    assert found(f"host {address} here") == []


@pytest.mark.parametrize("text", [
    "release 1.2.3.4.5 is out", "see 8.8.8.8.1", "v1.2.3.4", "version 10.0.19041.1",
    "on 12.05.2020", "pi 3.14.15.92x", "256.1.1.1", "01.02.03.04",
    "std::vector and Face::Add and dead::beef", "at 10:30:45", "mac 00:1A:2B:3C:4D:5E",
])
def test_ip_look_alikes_kept(text):
    assert [t for t, _ in found(text)].count("ip") == 0


@pytest.mark.parametrize("number", [
    "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005",
    "3782 822463 10005", "30569309025904", "6011000990139424", "4222222222222", "5018 0000 0009",
])
def test_card_found(number):
    assert found(f"card {number}, thanks") == [("card", number)]


@pytest.mark.parametrize("text", [
    "card 4111111111111112",        # Luhn fails
    "order 41111111111111110",      # 17 digits, Luhn fails
    "ref 12345678901234567890123",  # longer run of digits
    "x4111111111111111",            # glued to a word
    "+4111111111111111",            # after "+": a phone number's shape
    "pi 3.4111111111111111",        # a decimal
    "ISBN 9780306406157",           # starts with 9
    "at 1589234567890 ms",          # a 13-digit millisecond timestamp, Luhn-valid
    "id 123456789012",              # 12 digits that are not Maestro
])
def test_card_look_alikes_kept(text):
    assert [t for t, _ in found(text)].count("card") == 0


def test_card_ends_before_a_following_group():
    assert found("pay 4111 1111 1111 1111 2019 now") == [("card", "4111 1111 1111 1111")]


@pytest.mark.parametrize("value", [
    "DE89370400440532013000", "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32",
    "gb42nawi04454264788619", "FR1420041010050500013M02606",
])
def test_iban_found(value):
    assert found(f"IBAN {value} from me") == [("iban", value)]


@pytest.mark.parametrize("text", [
    "IBAN DE89370400440532013001",   # check digits fail
    "IBAN DE8937040044053201300",    # a digit short for Germany
    "IBAN XX89370400440532013000",   # no such country
    "model AB12CDEF34567890",
])
def test_iban_look_alikes_kept(text):
    assert found(text) == []


@pytest.mark.parametrize("text, value", [
    ("call +1 202-555-0143 now", "+1 202-555-0143"),
    ("Tel. 020 7946 0958", "020 7946 0958"),
    ("Büro: +49 30 123456", "+49 30 123456"),
    ("+33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ("(415) 555-2671 is the office", "(415) 555-2671"),
    ("Phone: 451 5986", "451 5986"),  # local number, found only because a phone word labels it
    ("416 60 039 office", "416 60 039"),
    ("the cell phone number (555-3476) and", "555-3476"),
    ("call (201) 555-0143 2019 please", "(201) 555-0143"),  # libphonenumber alone finds nothing here
    ("in 2019 0121 234 5678 was", "0121 234 5678"),
])
def test_phone_found(text, value):
    assert found(text) == [("phone", value)]


@pytest.mark.parametrize("text", [
    "from 1998 to 2004 and 2005 2006 2007",
    "population 8 336 817 in 2019",
    "ISBN 978-3-16-148410-0",
    "on 2020-06-20 14:11:22 and 12/05/2020",
    "It costs $1,234,567.89",
    "1 Kyle Busch 5040 5 1 17 27",  # a row of a table
    "my SSN is 023-01-0866",
    "451 5986 with no phone word",
    "Scores: 3-1 2-0 4-4",
    "passwords:\n6.  12345\n7.  123456789\n8.  1234567",  # a numbered list
    "Microsoft Office 2019 2016 and 2013",
    "Date: 2012-10-01 00:46:43",
])
def test_ordinary_numbers_kept(text):
    assert found(text) == []


def test_overlaps_keep_the_most_specific_then_the_longest():
    # the card's digits inside the e-mail address, a phone inside the IBAN: one span each
    assert found("mail 4111111111111111@example.com") == [("email", "4111111111111111@example.com")]
    assert found("IBAN DE89370400440532013000") == [("iban", "DE89370400440532013000")]
    spans = SCRUB.find("a@example.com 8.8.8.8 4111111111111111")
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))


def test_phone_does_not_take_the_digits_of_other_types():
    assert found("IBAN DE89 3704 0044 0532 0130 00, phone +1 202-555-0143") == [
        ("iban", "DE89 3704 0044 0532 0130 00"), ("phone", "+1 202-555-0143")]
    assert found("card 4111 1111 1111 1111 from 1.1.1.1") == [("card", "4111 1111 1111 1111"), ("ip", "1.1.1.1")]


def test_walls_of_numbers_cost_linear_time():
    start = time.perf_counter()
    for wall in ("12 " * 2000, "4111 " * 1500, "DE89 " * 1500, "1" * 10000, "12-34-56-78 " * 600, "1." * 5000):
        SCRUB(wall)
    assert time.perf_counter() - start < 5  # ~0.5 s; a quadratic scan takes minutes


def test_find_gives_offsets_into_the_text():
    text = "Mail jane@example.org or call +1 202-555-0143."
    assert SCRUB.find(text) == [Span("email", 5, 21, "jane@example.org"), Span("phone", 30, 45, "+1 202-555-0143")]


# --- replacement, counts, configuration ----------------------------------------------------------

TEXT = ("Mail jane@example.org or bob@example.net, call +1 202-555-0143, card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, server 8.8.8.8 and router 192.168.0.1.")


def test_typed_placeholders_and_counts():
    result = SCRUB(TEXT)
    assert result.text == ("Mail <EMAIL> or <EMAIL>, call <PHONE>, card <CARD>, IBAN <IBAN>, "
                           "server <IP> and router 192.168.0.1.")
    assert result.counts == {"email": 2, "ip": 1, "phone": 1, "card": 1, "iban": 1}


def test_counts_have_every_type_when_nothing_is_found():
    result = SCRUB("Nothing to see here.")
    assert result.text == "Nothing to see here."
    assert result.counts == dict.fromkeys(PII_TYPES, 0)


def test_redact_and_template_replacements():
    assert PiiScrubber(replacement="redact")("a jane@example.org b").text == f"a {REDACTED} b"
    assert PiiScrubber(replacement="<{type}>")("a jane@example.org b").text == "a <email> b"
    assert PiiScrubber(replacement="[{TYPE}]")("ip 8.8.8.8").text == "ip [IP]"
    assert PiiScrubber(replacement="***")("ip 8.8.8.8").text == "ip ***"


def test_only_the_chosen_types_are_scrubbed():
    result = PiiScrubber(types=("email", "ip"))(TEXT)
    assert "+1 202-555-0143" in result.text and "4111 1111 1111 1111" in result.text
    assert "<EMAIL>" in result.text and "<IP>" in result.text
    assert result.counts == {"email": 2, "ip": 1, "phone": 0, "card": 0, "iban": 0}


@pytest.mark.parametrize("replacement", [
    "", "{name}", "{0}", "{type", "{type.upper}", None, 42,
    "{type}@example.com",  # the placeholder would itself be an e-mail address
    "8.8.8.8",             # ... or a public IP
])
def test_bad_replacement_is_refused(replacement):
    with pytest.raises(ValueError):
        PiiScrubber(replacement=replacement)


def test_bad_types_and_regions_are_refused():
    with pytest.raises(ValueError, match="unknown PII types"):
        PiiScrubber(types=("email", "ssn"))
    with pytest.raises(ValueError, match="unknown phone regions"):
        PiiScrubber(phone_regions=("US", "XX"))


def test_phone_regions_decide_national_numbers():
    # a French national number is not valid in the US; "+..." numbers are found in any region
    assert found("ring 01 42 68 53 00 please", PiiScrubber(phone_regions=("US",))) == []
    assert found("ring 01 42 68 53 00 please", PiiScrubber(phone_regions=("FR",))) == [("phone", "01 42 68 53 00")]
    in_us = PiiScrubber(phone_regions=("US",))
    assert found("ring +33 1 42 68 53 00 please", in_us) == [("phone", "+33 1 42 68 53 00")]


# --- properties over generated texts -------------------------------------------------------------

# Words (phone words among them) and ordinary numbers, which may stand next to a PII value.
WORDS = ("the", "report", "was", "sent", "by", "our", "office", "phone", "call", "mail", "to",
         "server", "address", "card", "account", "and", "Monday", "résumé", "naïve", "über",
         "2019", "3", "42", "1.5", "10:30")


@st.composite
def emails(draw):
    atom = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-", min_size=1, max_size=10)
    local = ".".join(draw(st.lists(atom, min_size=1, max_size=3)))
    labels = draw(st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3))
    return f"{local}@{'.'.join(labels)}.{draw(st.sampled_from(['com', 'org', 'de', 'co.uk', 'info']))}"


@st.composite
def cards(draw):
    prefix, length = draw(st.sampled_from([("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("36", 14), ("4", 13),
                                           ("35", 19)]))
    body = prefix + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=length - len(prefix) - 1,
                                          max_size=length - len(prefix) - 1)))
    number = body + luhn.calc_check_digit(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    if sep and length == 16:
        number = sep.join(number[i:i + 4] for i in range(0, 16, 4))
    return number


@st.composite
def ibans(draw):
    # countries whose BBAN has no check of its own, so any digits make a valid IBAN
    country, bban = draw(st.sampled_from([
        ("DE", r"[0-9]{18}"), ("GB", r"[A-Z]{4}[0-9]{14}"), ("NL", r"[A-Z]{4}[0-9]{10}"),
        ("AT", r"[0-9]{16}"), ("CH", r"[0-9]{17}"), ("PL", r"[0-9]{24}"),
    ]))
    bban = draw(st.from_regex(bban, fullmatch=True))
    number = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
    assert stdnum_iban.is_valid(number)
    if draw(st.booleans()):
        number = " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def public(address) -> bool:
    return address.is_global and not address.is_multicast


ips = st.one_of(
    st.ip_addresses(v=4).filter(public),
    st.ip_addresses(network="2000::/3").filter(public),
).map(str)


@st.composite
def phones(draw):
    region = draw(st.sampled_from(["US", "GB", "DE", "FR"]))
    kind = draw(st.sampled_from([phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE]))
    example = phonenumbers.example_number_for_type(region, kind)
    national = str(example.national_number)
    tail = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=4, max_size=4)))
    number = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{tail}")
    if not phonenumbers.is_valid_number(number):
        number = example
    style = draw(st.sampled_from([phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                                  phonenumbers.PhoneNumberFormat.NATIONAL]))
    return phonenumbers.format_number(number, style)


PII = st.one_of(emails().map(lambda v: ("email", v)), cards().map(lambda v: ("card", v)),
                ibans().map(lambda v: ("iban", v)), ips.map(lambda v: ("ip", v)), phones().map(lambda v: ("phone", v)))
prose = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
punctuation = st.sampled_from([" ", ", ", ". ", "\n", " (", ") "])


@st.composite
def texts_with_pii(draw):
    """Prose with PII values between the words: (text, [(type, value) inserted])."""
    values = draw(st.lists(PII, max_size=5))
    pieces = [draw(prose)]
    for _, value in values:
        pieces += [draw(punctuation), value, draw(punctuation), draw(prose)]
    return "".join(pieces), values


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(texts_with_pii())
def test_no_original_pii_survives(sample):
    text, values = sample
    scrubbed = SCRUB(text)
    for _, value in values:
        assert value not in scrubbed.text, (value, scrubbed.text)
    # each one counted under its type (an ordinary number next to a phone word may add a phone)
    for pii_type, n in Counter(t for t, _ in values).items():
        assert scrubbed.counts[pii_type] >= n, (values, scrubbed.counts)


@PROPERTY
@given(texts_with_pii(), st.sampled_from(["typed", "redact", "<{type}>"]))
def test_scrubbing_is_idempotent(sample, replacement):
    scrubber = SCRUB if replacement == "typed" else PiiScrubber(replacement=replacement)
    once = scrubber(sample[0]).text
    again = scrubber(once)
    assert again.text == once
    assert again.counts == dict.fromkeys(PII_TYPES, 0)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_scrubs_without_error_and_idempotently(text):
    once = SCRUB(text).text
    assert SCRUB(once).text == once


# --- the labelled data ---------------------------------------------------------------------------

GOALS = {"email": 0.95, "ip": 0.95, "card": 0.95, "iban": 0.95}


@pytest.fixture(scope="module")
def scores():
    return evaluate(shared("pii", "presidio-synth.jsonl"))


def test_precision_and_recall_on_labelled_data(scores):
    print("\n" + format_table(scores))
    for pii_type, goal in GOALS.items():
        assert scores[pii_type]["precision"] >= goal, (pii_type, scores[pii_type])
        assert scores[pii_type]["recall"] >= goal, (pii_type, scores[pii_type])
    # phone has no goal; this guards what was measured (0.98 / 0.92) against regressions
    assert scores["phone"]["precision"] >= 0.9 and scores["phone"]["recall"] >= 0.85, scores["phone"]


def test_evaluate_counts_match_the_labels(scores):
    path = shared("pii", "presidio-synth.jsonl")
    gold = {"EMAIL_ADDRESS": 0, "IP_ADDRESS": 0, "PHONE_NUMBER": 0, "CREDIT_CARD": 0, "IBAN_CODE": 0}
    for line in path.read_text(encoding="utf-8").splitlines():
        for span in json.loads(line)["spans"]:
            if span["type"] in gold:
                gold[span["type"]] += 1
    assert [scores[t]["gold"] for t in ("email", "ip", "phone", "card", "iban")] == list(gold.values())
    for s in scores.values():
        assert s["precision"] == pytest.approx(s["tp"] / (s["tp"] + s["fp"]))
        assert s["recall"] == pytest.approx((s["gold"] - s["fn"]) / s["gold"])


def test_labelled_texts_without_pii_stay_untouched():
    path = shared("pii", "presidio-synth.jsonl")
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        if not any(s["type"] in ("EMAIL_ADDRESS", "IP_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN")
                   for s in doc["spans"]):
            assert SCRUB(doc["text"]).text == doc["text"]


def test_cli_prints_the_table():
    path = shared("pii", "presidio-synth.jsonl")
    out = subprocess.run([sys.executable, "-m", "tasks.pii", str(path)], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].split() == ["type", "precision", "recall", "tp", "fp", "fn", "gold"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == set(PII_TYPES)
