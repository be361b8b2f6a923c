"""PII scrubbing: finds e-mail addresses, public IP addresses, phone numbers, payment card numbers
and IBANs in a document's text and replaces each with a placeholder.

    from tasks.pii import PiiScrubber
    scrub = PiiScrubber()                     # all types, typed placeholders
    result = scrub("Mail jane@example.org or call +1 202-555-0143.")
    result.text      # "Mail <EMAIL> or call <PHONE>."
    result.counts    # {"email": 1, "ip": 0, "phone": 1, "card": 0, "iban": 0}
    scrub.find(text) # [Span(type, start, end, value), ...] without replacing

    PiiScrubber(types=("email", "ip"), replacement="redact")   # "[REDACTED]"
    PiiScrubber(replacement="<{type}>")                        # "<email>"; {TYPE} gives "EMAIL"
    # any other replacement value (a bad template, one that looks like PII) raises ValueError

    python -m tasks.pii ../shared/data/pii/presidio-synth.jsonl   # precision/recall per type

What counts as PII, per type:
- `email`: local part (RFC 5322 "atext" characters in ASCII, dot-separated, at most 64) @ a
  domain of dot-separated labels ending in an ASCII top-level domain; a trailing period stays in
  the text, and so do Chinese or Korean words glued to either end.
- `ip`: IPv4 (four decimal octets, no leading zeros) and IPv6, parsed by `ipaddress`; only public
  ones are scrubbed: `is_global`, the test FineWeb's datatrove PIIFormatter used, and not
  multicast. Private, loopback, link-local, shared (100.64/10), documentation, reserved IPv4 and
  unspecified addresses are kept. Caveat: Python's `is_global` also calls IPv6 outside 2000::/3
  (IETF-reserved, unallocated) global, so those are scrubbed too (the labelled data has one,
  6e40:4041:...); an IPv6 written with fewer than three groups must be in 2000::/3, so that C++
  names such as `Face::Add` stay. A dotted run of more than four numbers ("1.2.3.4.5", a version)
  is no address, nor is anything glued to a letter.
- `phone`: `phonenumbers.PhoneNumberMatcher` at leniency VALID for each configured region ("+..."
  numbers are found whatever the region), matches from several regions deduplicated; plus, where
  a phone word labels the number ("Phone:", "call me on", "... (mobile)", as Presidio uses
  context), numbers of 7 to 11 digits that are only POSSIBLE (local numbers without their area
  code, ranges the library does not know). Not phones: US SSN shapes (123-45-6789, which are
  valid German numbers), rows of a table ("5035 7 0 15 24": two or more one-digit groups), items
  of a numbered list ("7.  123456789"), digits already found as an IBAN, card or IP.
  libphonenumber reads a number with a neighbouring one ("(201) 555-0000 2019") as one invalid
  number; such a run is tried again without up to three digit groups before and two after.
- `card`: 12-19 digits, contiguous or in the usual groups (4-4-4-4[-3], 4-4-4-1..4, 4-6-5,
  4-6-4; spaces or dashes), Luhn-valid (`stdnum.luhn`), with a length and first digit that issuers use: 14-19
  digits starting 1-6 (the ISO/IEC 7812 industries that issue payment cards; ISBN-13s and most
  barcodes start 9), 13 digits only Visa's 4 (millisecond timestamps start with 1), 12 digits
  only Maestro's 50 or 56-69 (the labelled data has five). A contiguous run must be the whole
  run of digits (not inside a longer number, not after "+", not a decimal); in a run of groups
  the longest valid prefix wins ("4111 1111 1111 1111 2019").
- `iban`: country code, two check digits, BBAN, contiguous or in groups of four, valid for its
  country (`stdnum.iban`: length, format, mod-97); lower case accepted; words that happen to
  follow a spaced IBAN are dropped group by group until it validates.

Where spans overlap the more specific type wins: email (it holds any digits in its local part),
iban, card (checksums), ip, phone (the loosest); of one type, the longer span. Scrubbing is
idempotent: placeholders ("<EMAIL>", "[REDACTED]", a template's output) are checked to hold no
PII, and a text that a pass changed is scanned again, as a replacement can uncover PII that a
neighbour hid.

Speed: every regex is compiled once and opens with a digit or a literal where it can (re then
skips ahead), and each detector runs only when the text can hold its type: no '@', no e-mail
search; no digit, no IP/card/IBAN/phone search; the phone matcher (pure Python, slow) reads only
the stretches around runs of seven digits joined by phone punctuation. Measured on one core:
~3,800 docs/s (~19 MB/s) on the 330 article texts of ../shared/data/neardup/docs.jsonl (5 kB
each), ~28,000 docs/s on the HH dialogues (0.7 kB). The cost grows linearly with the text; the
worst case is a wall of phone-like digit groups, which the phone matcher parses at ~30 us a
character (0.9 s for 20 kB of "12 12 12 ...").

Measuring (`evaluate`): the labelled file holds one JSON object per line, `{"text", "spans":
[{type, start, end, value}]}`, with Presidio's type names (EMAIL_ADDRESS, IP_ADDRESS,
PHONE_NUMBER, CREDIT_CARD, IBAN_CODE; other types are out of scope, so a prediction over them is
a false positive). Matching is by overlap: a predicted span is a true positive when it overlaps a
gold span of the same type, else a false positive; a gold span that no predicted span of its
type overlaps is a false negative. precision = tp / (tp + fp), recall = (gold - fn) / gold.
On ../shared/data/pii/presidio-synth.jsonl (default regions US, GB, DE, FR):

    type   precision  recall   tp   fp   fn  gold
    email      1.000   1.000   28    0    0    28
    ip         1.000   1.000    7    0    0     7
    phone      0.979   0.920   46    1    4    50
    card       1.000   0.984   60    0    1    61
    iban       1.000   1.000   12    0    0    12

The errors left: "060426070011", labelled a card, is Faker's made-up Maestro prefix 0604 (no
issuer's number starts with 0), so it is no card here and, being a valid German number, a phone
(the one phone false positive and the card miss); four phone labels ("668 5702", "99 668472",
"516 466 638", "78 651 450") are local numbers with no area code and no phone word near them,
which no region validates.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from warehouse.schema import PII_TYPES

# Of overlapping spans, the first type here wins (then the longer span).
_SPECIFICITY = ("email", "iban", "card", "ip", "phone")
REDACTED = "[REDACTED]"

# Presidio's labels -> ours (labels not listed are out of scope).
PRESIDIO_TYPES = {
    "EMAIL_ADDRESS": "email",
    "IP_ADDRESS": "ip",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
}


@dataclass(slots=True)
class Span:
    type: str
    start: int
    end: int
    value: str


@dataclass
class ScrubResult:
    text: str
    counts: dict[str, int]  # per type, every PII_TYPES key present


# --- e-mail --------------------------------------------------------------------------------------

# ASCII local part and top-level domain: in Chinese or Korean text an address is often glued to
# the words around it ("邮箱pillgoo9@gmail.com으로"); domain labels may be Unicode (IDN).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# The local part is found backwards from each '@' in a window of 64 characters (the RFC limit),
# so a long run of word characters before an '@' costs 64 steps, not a quadratic scan.
_EMAIL_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_IS_ATEXT = re.compile(_ATEXT)
_EMAIL_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})(?![a-z0-9])",
                           re.IGNORECASE)


def find_emails(text: str) -> list[Span]:
    spans, at = [], text.find("@")
    while at != -1:
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        window = max(0, at - 64)
        local = _EMAIL_LOCAL.search(text, window, at) if domain and at else None
        # a local part cut by the window is longer than 64: no address
        if local and not (local.start() == window and window and _IS_ATEXT.match(text, window - 1)):
            spans.append(Span("email", local.start(), domain.end(), text[local.start():domain.end()]))
        at = text.find("@", domain.end() if domain else at + 1)
    return spans


# --- IP addresses --------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Not glued to a word or to another dotted number (version strings "1.2.3.4.5"); a sentence's
# final period may follow.
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
# A maximal run of hex digits and colons with at least two colons, possibly ending in a dotted
# IPv4; `ipaddress` decides whether it is an address.
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9a-f]*:[0-9a-f]*:)[0-9a-f:]{2,39}(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\d)",
    re.IGNORECASE)
# Cheap tests (a literal first character lets re skip ahead) before the full patterns run.
_IPV4_HINT = re.compile(r"\.\d{1,3}\.\d")
_IPV6_HINT = re.compile(r":[0-9a-f]{0,4}:", re.IGNORECASE)
_HEX_GROUP = re.compile(r"[0-9a-f]{1,4}", re.IGNORECASE)
_ALLOCATED_IPV6 = ipaddress.IPv6Network("2000::/3")


def is_public_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global is FineWeb's test; Python 3.11 still calls IPv4 multicast (224/4) global.
    return address.is_global and not address.is_multicast


def find_ips(text: str) -> list[Span]:
    spans = []
    for m in _IPV4.finditer(text) if _IPV4_HINT.search(text) else ():
        if is_public_ip(ipaddress.IPv4Address(m.group())):
            spans.append(Span("ip", m.start(), m.end(), m.group()))
    if _IPV6_HINT.search(text):
        for m in _IPV6.finditer(text):
            value = m.group()
            if value.endswith(":") and not value.endswith("::"):  # "at 2001:db8::1: ..."
                value = value[:-1]
            try:
                address = ipaddress.IPv6Address(value)
            except ValueError:
                continue
            # C++ names such as "Face::Add" parse too: written that short, only an address of the
            # block IANA allocates (2000::/3) counts
            if len(_HEX_GROUP.findall(value)) < 3 and address not in _ALLOCATED_IPV6:
                continue
            if is_public_ip(address):
                spans.append(Span("ip", m.start(), m.start() + len(value), value))
    return spans


# --- payment cards -------------------------------------------------------------------------------

# The pattern opens with a digit and looks behind it (not ahead of it), so that re can jump from
# digit to digit: three times faster on prose than a pattern that opens with a look-behind.
_CARD = re.compile(
    r"""
    \d(?<![\w+]\d)(?<!\d[.,-]\d)                    # not inside a number, after "+" or a decimal point
    (?: \d{3}(?P<sep>[ -])\d{4}(?:(?P=sep)\d{4}){0,2}(?:(?P=sep)\d{1,4})?  # 4-4-4-4, 4-4-4-4-3, 4-4-4-1, ...
      | \d{3}(?P<sep2>[ -])\d{6}(?P=sep2)\d{4,5}         # Amex 4-6-5, Diners 4-6-4
      | \d{11,18} )
    (?!\w|[.,]\d)
    """,
    re.VERBOSE | re.ASCII,
)
_CARD_SEPARATOR = re.compile(r"[ -]")


def is_card_number(digits: str) -> bool:
    """Luhn-valid, of a length and first digits that card issuers use."""
    if len(digits) == 12:  # Maestro only
        issued = digits[:2] in ("50", "56", "57", "58", "59") or digits[0] == "6"
    elif len(digits) == 13:  # Visa only (13-digit millisecond timestamps start with 1)
        issued = digits[0] == "4"
    else:
        issued = 14 <= len(digits) <= 19 and digits[0] in "123456"
    return issued and luhn.is_valid(digits)


def find_cards(text: str) -> list[Span]:
    spans, pos = [], 0
    while m := _CARD.search(text, pos):
        groups = _CARD_SEPARATOR.split(m.group())
        # the longest prefix of the groups that is a card: "4111 1111 1111 1111 2019" keeps the card
        for n in range(len(groups), 0, -1):
            if is_card_number("".join(groups[:n])):
                value = m.group()[:sum(map(len, groups[:n])) + n - 1]
                spans.append(Span("card", m.start(), m.start() + len(value), value))
                pos = m.start() + len(value)
                break
        else:
            pos = m.start() + 1  # a later group may start a card ("0143 4111 1111 1111 1111")
    return spans


# --- IBAN ----------------------------------------------------------------------------------------

# Found from its check digits (re jumps from digit to digit; letters are everywhere), looking back
# for the country code.
_IBAN = re.compile(r"\d\d(?<=\b[a-zA-Z]{2}\d\d)(?: ?[a-zA-Z0-9]{4}){2,7}(?: ?[a-zA-Z0-9]{1,4})?\b", re.ASCII)


def is_iban(compact: str) -> bool:
    """Valid for its country. The mod-97 check alone first: it is cheaper than stdnum's full
    validation and rejects 96 of 97 look-alikes."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1 and stdnum_iban.is_valid(compact)


def find_ibans(text: str) -> list[Span]:
    spans, pos = [], 0
    while m := _IBAN.search(text, pos):
        start, pos = m.start() - 2, m.start() + 1
        parts = text[start:m.end()].split(" ")
        # words after a spaced IBAN ("... 3000 from") look like groups: drop them until it validates
        while sum(map(len, parts)) >= 15:
            value = " ".join(parts)
            if is_iban(value.replace(" ", "")):
                spans.append(Span("iban", start, start + len(value), value))
                pos = start + len(value)
                break
            parts.pop()
    return spans


# --- phone numbers -------------------------------------------------------------------------------

# Runs of digit groups joined by phone punctuation (phonenumbers' separators), each group of two
# digits or more but a leading one ("+1 ...", "0 800 ...", "+33 1 ...") and "(0)"; a run of seven
# digits or more is worth the phone matcher: a valid number has at least seven (national numbers
# of 4 digits after a 3-digit country code), and seven digits in such groups are rare in prose
# ("in 2019 and 2020"), while rows of a table ("5040 5 1 17 27") break at their one-digit groups.
# The run pattern is slow to scan a whole text with (it cannot skip ahead), so it reads only the
# clusters of seven digits that a quick pattern finds first.
_PHONE_PUNCTUATION = r" \t\xa0\-./()\[\]~\u2010-\u2015\u2212\u30fc\uff0d-\uff0f\uff08\uff09\u3000"
_DIGIT_CLUSTER = re.compile(rf"\d(?:[+{_PHONE_PUNCTUATION}]{{0,4}}\d){{6,}}")
_PHONE_RUN = re.compile(  # a "+" only opens a run, as may a "(" ("(201) 555-0143")
    rf"[+(]?(?:\d{{1,3}}[{_PHONE_PUNCTUATION}]{{1,3}})?(?:\d[{_PHONE_PUNCTUATION}]{{1,3}})?\d{{2,}}"
    rf"(?:[{_PHONE_PUNCTUATION}]{{1,3}}(?:\(0\)[{_PHONE_PUNCTUATION}]{{0,2}})?\d{{2,}})*")
# Words that label a phone number in contact blocks and sentences ("Phone: ...", "call me on ...",
# "... (mobile)"), as Presidio's phone recognizer uses context.
_PHONE_WORD = r"(?:tel(?:ephone)?|phone|mobile|cell(?:phone)?|fax|call(?:ed|ing)?|desk|office|whatsapp)"
_PHONE_CONTEXT = re.compile(rf"\b{_PHONE_WORD}\b", re.IGNORECASE)
# The word, then only punctuation and little words up to the number: "Phone:\n", "call me on ",
# "phone number is ". Never a placeholder's word ("<PHONE> 451 5986").
_CONTEXT_BEFORE = re.compile(
    rf"(?<![<\[{{])\b{_PHONE_WORD}s?\b[\s:.#-]*"
    rf"(?:(?:me|us|him|her|them|at|on|to|is|number|no|nr|my|our)\b[\s:.#-]*){{0,3}}\Z",
    re.IGNORECASE)
_CONTEXT_AFTER = re.compile(rf"[^\w\n<\[{{]{{0,3}}{_PHONE_WORD}\b", re.IGNORECASE)  # " office", "-Fax", " (mobile)"
# US Social Security numbers (123-45-6789) are valid German numbers to phonenumbers; not phones.
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")
# Rows of a table ("5035 7 0 15 24") parse as German numbers; a phone number has at most one
# group of a single digit ("+33 1 23 45 67 89", "1 800 555 0199"), not counting "(0)".
_GROUPS_OF_ONE = re.compile(r"(?:(?<![\d(])\d(?![\d)]).*){2}")
# "7.  123456789" in a numbered list is a valid US number to phonenumbers
_LIST_MARKER = re.compile(r"\d{1,3}\.\s")
_YEARS = re.compile(r"(?:(?:19|20)\d\d\W{0,3})+")  # "Office 2019 2016", "call 1998-2004"
_DIGITS = re.compile(r"\d+")
_ENDS_TOKEN = re.compile(r"[,;.!?)]?(?:\s|\Z)")


def _has_phone_context(text: str, start: int, end: int) -> bool:
    return bool(_CONTEXT_BEFORE.search(text, max(0, start - 30), start) or _CONTEXT_AFTER.match(text, end))


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """40 characters more on each side (room for "+44", "Tel.", "ext. 12"), then on to whitespace."""
    lo, hi = max(0, start - 40), min(len(text), end + 40)
    while lo > 0 and not text[lo - 1].isspace() and start - lo < 100:
        lo -= 1
    while hi < len(text) and not text[hi].isspace() and hi - end < 100:
        hi += 1
    return lo, hi


def _phone_windows(text: str) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """(start, end, runs): stretches of text around the phone-like runs they hold. The phone
    matcher parses every number it sees, so it reads only these, not the whole document."""
    windows: list[tuple[int, int, list[tuple[int, int]]]] = []
    for cluster in _DIGIT_CLUSTER.finditer(text):
        for m in _PHONE_RUN.finditer(text, max(0, cluster.start() - 1), cluster.end()):  # with a "+" or "("
            if sum(map(str.isdigit, m.group())) < 7:
                continue
            lo, hi = _widen(text, m.start(), m.end())
            if windows and lo <= windows[-1][1]:
                windows[-1] = (windows[-1][0], hi, windows[-1][2] + [m.span()])
            else:
                windows.append((lo, hi, [m.span()]))
    return windows


def _not_a_phone(value: str) -> bool:
    return bool(_SSN_SHAPE.fullmatch(value) or _GROUPS_OF_ONE.search(value) or _LIST_MARKER.match(value))


def _add_phone(found: dict, start: int, value: str) -> None:
    if value.startswith("(") and ")" not in value:  # "(555-3476)": the library leaves out the ")"
        start, value = start + 1, value[1:]
    found[start, start + len(value)] = value


def _match_phones(text: str, lo: int, hi: int, regions: tuple[str, ...], found: dict) -> int:
    """Adds to found the phone numbers in text[lo:hi] (see find_phones); how many were new."""
    before = len(found)
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text[lo:hi], region, leniency=phonenumbers.Leniency.VALID):
            if not _not_a_phone(m.raw_string):
                _add_phone(found, lo + m.start, m.raw_string)
    if _PHONE_CONTEXT.search(text, max(0, lo - 30), hi + 30):
        for region in regions:
            for m in phonenumbers.PhoneNumberMatcher(text[lo:hi], region, leniency=phonenumbers.Leniency.POSSIBLE):
                start, end = lo + m.start, lo + m.end
                # 7 to 11 digits: a local number to a full one; "(201) 555-0143 2019" is two numbers
                if ((start, end) not in found and 7 <= len(str(m.number.national_number)) <= 11
                        and not _YEARS.fullmatch(m.raw_string) and not _not_a_phone(m.raw_string)
                        and _has_phone_context(text, start, end)):
                    _add_phone(found, start, m.raw_string)
    return len(found) - before


def _match_inside(text: str, run_start: int, run_end: int, regions: tuple[str, ...], found: dict) -> None:
    """libphonenumber takes "2019 0121 234 5678", "(201) 555-0000 2019" or "+44 121 234 0000 3" for
    one number and finds none in it: try the run alone, then without up to three groups before and
    two after (fewest first)."""
    groups = [m.span() for m in _DIGITS.finditer(text, run_start, run_end)]
    if len(groups) > 8:  # a list of numbers, not a phone number and a neighbour
        return
    cuts = sorted(((lead, trail) for lead in range(4) for trail in range(3) if lead + trail < len(groups)), key=sum)
    for lead, trail in cuts:
        start = groups[lead - 1][1] if lead else run_start
        while text[start] in " \t\xa0":
            start += 1
        end = groups[len(groups) - 1 - trail][1]
        # cut only before a space: the library's own date and time filters need what follows
        # ("2012-10-01 00" is a German number, "2012-10-01 00:46:43" a time)
        if (_ENDS_TOKEN.match(text, end) and sum(map(str.isdigit, text[start:end])) >= 7
                and _match_phones(text, start, end, regions, found)):
            return


def find_phones(text: str, regions: tuple[str, ...]) -> list[Span]:
    """Numbers phonenumbers finds valid for a region; and numbers of 7 to 11 digits that are
    merely possible (the right length: local numbers without their area code, numbers in ranges
    the library does not know) where a phone word labels them."""
    found: dict[tuple[int, int], str] = {}
    for lo, hi, runs in _phone_windows(text):
        _match_phones(text, lo, hi, regions, found)
        for run_start, run_end in runs:
            if not any(start < run_end and run_start < end for start, end in found):
                _match_inside(text, run_start, run_end, regions, found)
    return [Span("phone", start, end, text[start:end]) for start, end in found]


# --- scrubbing -----------------------------------------------------------------------------------

_DIGIT = re.compile(r"\d")
_MAX_PASSES = 4


def _mask(text: str, spans: list[Span]) -> str:
    """The text with the spans' characters blanked out (offsets unchanged): the phone matcher, the
    loosest and slowest detector, then skips digits that are already an IBAN, a card or an IP."""
    pieces, end = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start >= end:
            pieces += (text[end:span.start], "_" * (span.end - span.start))
            end = span.end
        elif span.end > end:  # overlaps the one before
            pieces.append("_" * (span.end - end))
            end = span.end
    pieces.append(text[end:])
    return "".join(pieces)


def _best_first(spans: list[Span]) -> list[Span]:
    """Of spans that overlap one another: the most specific, then the longest, and so on."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (_SPECIFICITY.index(s.type), s.start - s.end, s.start)):
        if all(span.end <= k.start or k.end <= span.start for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def resolve_overlaps(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans in text order. Spans are grouped into runs that overlap (a sweep
    over the sorted spans), so a page listing thousands of addresses costs no pairwise checks."""
    resolved: list[Span] = []
    group: list[Span] = []
    group_end = -1
    for span in sorted(spans, key=lambda s: s.start):
        if span.start >= group_end and group:
            resolved += _best_first(group) if len(group) > 1 else group
            group = []
        group.append(span)
        group_end = max(group_end, span.end) if len(group) > 1 else span.end
    resolved += _best_first(group) if len(group) > 1 else group
    return resolved


class PiiScrubber:
    """Finds PII spans of the chosen types and replaces them (see the module docstring)."""

    def __init__(self, types=PII_TYPES, replacement: str = "typed", phone_regions=("US", "GB", "DE", "FR")):
        self.types = tuple(types)
        unknown = set(self.types) - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; known: {', '.join(PII_TYPES)}")
        self.phone_regions = tuple(phone_regions)
        bad_regions = set(self.phone_regions) - phonenumbers.SUPPORTED_REGIONS
        if bad_regions:
            raise ValueError(f"unknown phone regions {sorted(bad_regions)} (use ISO 3166 codes such as 'US')")
        self.placeholders = {t: self._placeholder(replacement, t) for t in PII_TYPES}
        for t, placeholder in self.placeholders.items():
            if self.find(placeholder):  # e.g. "{type}@example.com": scrubbing would not be idempotent
                raise ValueError(f"replacement {replacement!r} gives {placeholder!r}, which looks like PII itself")

    @staticmethod
    def _placeholder(replacement: str, pii_type: str) -> str:
        if replacement == "typed":
            return f"<{pii_type.upper()}>"
        if replacement == "redact":
            return REDACTED
        if not isinstance(replacement, str) or not replacement:
            raise ValueError(f"replacement must be 'typed', 'redact' or a non-empty template, not {replacement!r}")
        try:
            fields = {field for _, field, _, _ in Formatter().parse(replacement) if field is not None}
        except ValueError as e:  # "{type"
            raise ValueError(f"bad replacement template {replacement!r}: {e}") from None
        if not fields <= {"type", "TYPE"}:  # "{name}", "{0}", "{type.upper}"
            raise ValueError(f"replacement template {replacement!r} may only use {{type}} and {{TYPE}}")
        return replacement.format(type=pii_type, TYPE=pii_type.upper())

    def find(self, text: str) -> list[Span]:
        """PII spans in text order, without overlaps."""
        types, spans = self.types, []
        if "email" in types and "@" in text:
            spans += find_emails(text)
        if _DIGIT.search(text):
            if "ip" in types:
                spans += find_ips(text)
            if "card" in types:
                spans += find_cards(text)
            if "iban" in types:
                spans += find_ibans(text)
            if "phone" in types:
                spans += find_phones(_mask(text, spans) if spans else text, self.phone_regions)
        return resolve_overlaps(spans) if len(spans) > 1 else spans

    def __call__(self, text: str) -> ScrubResult:
        counts = dict.fromkeys(PII_TYPES, 0)
        # A replacement can uncover PII that its neighbour hid (a number that was glued to a card,
        # a phone word that was too far away), so a text that changed is scanned again: the
        # result is what a further scrub leaves as it is. Most texts hold no PII: one pass.
        for _ in range(_MAX_PASSES):
            spans = self.find(text)
            if not spans:
                break
            text = self._replace(text, spans, counts)
        return ScrubResult(text, counts)

    def _replace(self, text: str, spans: list[Span], counts: dict[str, int]) -> str:
        pieces, end = [], len(text)
        for span in reversed(spans):  # right to left, so earlier offsets stay valid
            pieces += (text[span.end:end], self.placeholders[span.type])
            end = span.start
            counts[span.type] += 1
        pieces.append(text[:end])
        return "".join(reversed(pieces))


# --- measuring -----------------------------------------------------------------------------------

def _overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def evaluate(path: str | Path, scrubber: PiiScrubber | None = None) -> dict[str, dict]:
    """Span-level precision and recall per type on a Presidio-style labelled JSONL file (matching
    by overlap, see the module docstring): {type: {precision, recall, tp, fp, fn, gold}}."""
    scrubber = scrubber or PiiScrubber()
    tp, fp, fn, gold_count = Counter(), Counter(), Counter(), Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            gold = [Span(PRESIDIO_TYPES[s["type"]], s["start"], s["end"], s["value"])
                    for s in doc["spans"] if s["type"] in PRESIDIO_TYPES]
            predicted = scrubber.find(doc["text"])
            for p in predicted:
                hit = any(g.type == p.type and _overlaps(g, p) for g in gold)
                (tp if hit else fp)[p.type] += 1
            for g in gold:
                gold_count[g.type] += 1
                if not any(p.type == g.type and _overlaps(g, p) for p in predicted):
                    fn[g.type] += 1
    return {
        t: {
            "precision": tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 1.0,
            "recall": (gold_count[t] - fn[t]) / gold_count[t] if gold_count[t] else 1.0,
            "tp": tp[t], "fp": fp[t], "fn": fn[t], "gold": gold_count[t],
        }
        for t in scrubber.types
    }


def format_table(scores: dict[str, dict]) -> str:
    lines = [f"{'type':<6} {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>4} {'fn':>4} {'gold':>5}"]
    for t, s in scores.items():
        lines.append(f"{t:<6} {s['precision']:>9.3f} {s['recall']:>7.3f} "
                     f"{s['tp']:>4} {s['fp']:>4} {s['fn']:>4} {s['gold']:>5}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tasks.pii LABELLED.jsonl")
    print(format_table(evaluate(sys.argv[1])))
