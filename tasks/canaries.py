"""PII canaries for a privacy audit: fake e-mail addresses, phone numbers and card numbers planted
in article pages of a copy of the input, so that one can check that none reaches the warehouse
(and later, by prompting the trained model with each canary's prefix, that none was memorized).

    from tasks.canaries import make_canaries, plant_canaries, warehouse_leaks
    canaries = make_canaries(6, seed=0)                        # deterministic; kinds take turns
    inputs = plant_canaries(inputs, canaries, Path("audit"))   # audit/pages/*.html, audit/canaries.json
    run_pipeline(inputs, cfg, until="pii")
    warehouse_leaks(cfg.data_root, canaries)                   # ids of canaries still in kept_documents: []

    python -m tasks.canaries plant FOLDER [N [SEED]]           # prints the input folder to add
    python -m tasks.canaries leaks DATA_ROOT FOLDER            # leaked canary ids, one a line

Secrets are made to be caught by tasks.pii and found nowhere else: e-mails carry a random 6-digit
number (RFC 2606 example domains), phones are in ranges kept for fiction (US 555-01xx, UK
020 7946 0xxx), cards are Luhn-valid under the test BINs 400000 (Visa) and 555555 (Mastercard).
Each page is several paragraphs of plain English prose, drawn from the fixed sentences below per
canary (so pages survive the default language and quality filters and are no near duplicates of
one another), with the canary sentence `prefix + " " + secret + "."` in its second paragraph.
The manifest lives beside the pages, not among them, so it is never ingested. Only the warehouse
is checked: parquet/shards/ and WARC files keep the unscrubbed text by design.
"""

from __future__ import annotations

import html
import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from stdnum import luhn

from warehouse import Warehouse
from warehouse.pii_queries import kept_text_contains

KINDS = ("email", "phone", "card")
FIRST = ("Margarethe Tobias Aurelio Ingrid Desmond Priya Casimir Lucinda Oswin Fenella Rasmus Odalys Thaddeus "
         "Wilhelmina").split()
LAST = "Ivanova Lindqvist Okonkwo Haverford Castellanos Thornbury Nakashima Petrakis Abernethy Vasquez Kowalczyk".split()
TEMPLATES = {
    "email": ["For billing questions about the spring workshop series, please write to {name} at",
              "If you would like a copy of the full seating plan, send a short note to {name} at",
              "Volunteers who want to join the Saturday shift can reach our coordinator {name} by writing to"],
    "phone": ["To book a table for the harvest dinner, call {name} at the front desk on",
              "Anyone who finds a lost bicycle near the river path can phone {name} on",
              "For questions about the delivery schedule, you can call our dispatcher {name} on"],
    "card": ["For the trial order last week, {name} paid the invoice with the company card numbered",
             "The receipt shows that the conference tickets for {name} were charged to card number",
             "According to the booking log, {name} reserved the lakeside cabin with the credit card"],
}
PROSE = [  # topics of plain sentences; a page takes four sentences from each of three topics
    ["The community garden opened again in early spring after a long and quiet winter.",
     "Most of the raised beds were planted with beans, lettuce and a few rows of onions.",
     "Older members showed the newcomers how to turn the compost and where to find the tools.",
     "A small group met every Tuesday evening to water the seedlings and pull up the weeds.",
     "By the middle of summer the tomatoes had grown taller than anyone had expected.",
     "The children enjoyed the sunflowers most, and they measured them against the fence each week."],
    ["Baking bread at home takes patience more than skill, and the dough needs time to rise.",
     "Many people start with a simple loaf made from flour, water, salt and a little yeast.",
     "The kitchen should be warm, because a cold room slows the yeast and the dough stays heavy.",
     "After the first rise, the dough is folded gently and shaped into a round loaf.",
     "A hot oven gives the crust its colour, while steam keeps it from hardening too early.",
     "The hardest part for most bakers is waiting for the bread to cool before they slice it."],
    ["The old railway line through the valley has been turned into a path for walkers and cyclists.",
     "It follows the river for most of its length and passes through two small villages.",
     "In autumn the trees along the path turn yellow and red, and the views are at their best.",
     "Families often stop at the bridge to watch the herons standing in the shallow water.",
     "The local council repaired the surface last year, so the path is now smooth and wide.",
     "There are benches every few miles, and a cafe near the old station serves soup and tea."],
    ["The town library has become much more than a quiet place to borrow books.",
     "On weekday mornings it runs reading groups for young children and their parents.",
     "In the afternoons students come to work at the long tables near the windows.",
     "The staff also help older visitors learn how to use the computers and the online catalogue.",
     "Every month a local author is invited to talk about their work and answer questions.",
     "Many residents say that the library is the heart of the town and should never close."],
    ["Learning to play the piano as an adult is slower than it is for children, but just as rewarding.",
     "Teachers usually suggest short practice sessions every day instead of one long session each week.",
     "Scales and simple exercises may seem dull, yet they build the strength that harder pieces need.",
     "Many students choose a favourite song as their first goal, which keeps them motivated.",
     "Playing for friends can be frightening at first, but it becomes easier with every attempt.",
     "Over time the hands learn the patterns, and the music starts to feel natural."],
    ["The weekly market fills the main square with stalls from early morning until the afternoon.",
     "Farmers from the nearby hills bring cheese, eggs, honey and fresh vegetables.",
     "A family of fishermen sells the morning catch from a cart covered with crushed ice.",
     "Shoppers who arrive early get the best choice, while those who come late find bargains.",
     "The market has been held in the same place for as long as anyone in the town can remember.",
     "In winter the stalls sell hot drinks, warm bread and thick woollen hats and gloves."],
]


@dataclass
class Canary:
    id: str
    kind: str  # "email" | "phone" | "card"
    secret: str  # the fake value planted in the page
    prefix: str  # the text right before the secret in the page
    page: str  # file name of its page


def _secret(kind: str, first: str, last: str, rng: random.Random) -> str:
    if kind == "email":
        domain = rng.choice(["example.com", "example.org", "example.net"])
        return f"{first}.{last}.{rng.randrange(100000, 1000000)}@{domain}".lower()
    if kind == "phone":
        if rng.random() < 0.5:
            area, line = rng.choice(["202", "312", "415", "617", "713", "303"]), f"01{rng.randrange(100):02d}"
            return rng.choice([f"+1 {area}-555-{line}", f"({area}) 555-{line}"])
        return f"+44 20 7946 0{rng.randrange(1000):03d}"
    body = rng.choice(["400000", "555555"]) + "".join(rng.choice("0123456789") for _ in range(9))
    digits = body + luhn.calc_check_digit(body)
    return rng.choice([" ", "-"]).join(digits[i:i + 4] for i in range(0, 16, 4))


def compact(secret: str) -> str:
    """A phone or card number without its separators and country code; an e-mail as it is."""
    return secret if "@" in secret else re.sub(r"\D", "", secret).removeprefix("1" if secret.startswith("+1 ") else "")


def make_canaries(n: int, seed: int) -> list[Canary]:
    """n canaries, kinds in turn (email, phone, card, ...), the same for the same seed; secrets
    and prefixes unique (a prompt must point at one secret)."""
    if n > (most := len(KINDS) * len(FIRST) * len(LAST) * min(map(len, TEMPLATES.values()))):
        raise ValueError(f"at most {most} canaries (one prefix each: kinds x names x templates)")
    rng, canaries, seen = random.Random(seed), [], set()
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        prefix = ""
        while not prefix or prefix in seen:
            first, last = rng.choice(FIRST), rng.choice(LAST)
            prefix = rng.choice(TEMPLATES[kind]).format(name=f"{first} {last}")
        secret = _secret(kind, first, last, rng)
        while compact(secret) in seen:  # "(202) 555-0143" and "+1 202-555-0143" are one number
            secret = _secret(kind, first, last, rng)
        seen |= {prefix, compact(secret)}
        cid = f"canary-{seed}-{i:03d}-{kind}"
        canaries.append(Canary(cid, kind, secret, prefix, f"{cid}.html"))
    return canaries


def page_html(canary: Canary) -> str:
    """An article page: three paragraphs of prose, the canary sentence closing the second."""
    rng = random.Random(canary.id)
    paragraphs = [" ".join(rng.sample(topic, 4)) for topic in rng.sample(PROSE, 3)]
    paragraphs[1] += f" {canary.prefix} {canary.secret}."
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
    title = f"Notes from the neighbourhood, part {canary.id.rsplit('-', 2)[1]}"
    return (f"<html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><article>\n<h1>{title}</h1>\n{body}</article></body></html>")


def plant_canaries(inputs: list[str], canaries: list[Canary], folder: Path) -> list[str]:
    """Write one page per canary into folder/pages/ and the manifest folder/canaries.json; the
    inputs to run: the given ones (untouched) and the pages folder."""
    pages = Path(folder) / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    for canary in canaries:
        (pages / canary.page).write_text(page_html(canary), encoding="utf-8")
    (Path(folder) / "canaries.json").write_text(json.dumps([asdict(c) for c in canaries], indent=1), encoding="utf-8")
    return [*map(str, inputs), str(pages)]


def load_canaries(folder: Path) -> list[Canary]:
    return [Canary(**c) for c in json.loads((Path(folder) / "canaries.json").read_text(encoding="utf-8"))]


def warehouse_leaks(root: Path, canaries: list[Canary]) -> list[str]:
    """Ids of the canaries whose secret (as written, or without separators) is in the text of a
    document the warehouse keeps (kept_documents), in the canaries' order."""
    with Warehouse.open(Path(root), read_only=True) as wh:
        return [c.id for c in canaries if kept_text_contains(wh.con, [c.secret, compact(c.secret)])]


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "plant":
        n, seed = (int(sys.argv[i]) if len(sys.argv) > i else d for i, d in ((3, 6), (4, 0)))
        print(plant_canaries([], make_canaries(n, seed), Path(sys.argv[2]))[-1])
    elif len(sys.argv) == 4 and sys.argv[1] == "leaks":
        print("\n".join(warehouse_leaks(Path(sys.argv[2]), load_canaries(Path(sys.argv[3])))))
    else:
        sys.exit(__doc__)
