"""Quality filters of curation: FineWeb's heuristic rules, with datatrove 0.10's semantics,
defaults and reason names.

    from tasks.quality import QualityFilters
    check = QualityFilters(cfg.curate.quality)
    result = check(text)      # QualityResult(text, signals, reason, detail, filter)
    if result.reason is None:
        keep(result.text)     # the C4 filter may have removed lines

The filters run in FineWeb's order; the first one that drops a document ends the chain. Each
is the datatrove filter FineWeb used, and drops with datatrove's reason:

- `gopher_repetition` (`GopherRepetitionFilter()`): `empty`, `dup_para_frac`,
  `dup_para_char_frac`, `dup_line_frac`, `dup_line_char_frac`, `top_{n}_gram` (n = 2, 3, 4),
  `duplicated_{n}_n_grams` (n = 5..10).
- `gopher_quality` (`GopherQualityFilter()`): `gopher_short_doc`, `gopher_long_doc`,
  `gopher_below_avg_threshold`, `gopher_above_avg_threshold`, `gopher_too_many_hashes`,
  `gopher_too_many_ellipsis`, `gopher_too_many_bullets`, `gopher_too_many_end_ellipsis`,
  `gopher_below_alpha_threshold`, `gopher_enough_stop_words` (fewer than 2 *distinct* stop words).
- `c4` (`C4QualityFilter(filter_no_terminal_punct=False)`): `lorem_ipsum`, `curly_bracket`,
  `too_few_sentences`; before counting sentences it removes lines of fewer than 3 words, with a
  word over 1000 characters, mentioning javascript or cookie/privacy/terms-of-use, and strips
  Wikipedia citation marks ("[1]", "[edit]"), as datatrove does.
- `fineweb` (`FineWebQualityFilter()`): `empty`, `line_punct_ratio`, `short_line_ratio`,
  `char_dup_ratio`, `list_ratio`.

`signals` holds each value a rule compared, under a stable name (`dup_line_frac`, `top_2_gram_frac`,
`word_count`, `stop_word_count`, `sentence_count`, `line_punct_ratio`, ...), for the warehouse; a
dropped document has the signals measured up to the rule that dropped it. A Gopher threshold of 0
switches its rule off, as None does in datatrove. Counting drops by reason is the caller's job
(tasks/curate_shard.py).

Where this differs from datatrove, and why:
- Words and sentences. datatrove 0.10 splits English with spaCy (`spacy.blank("en")` and its
  "sentencizer"); here `split_words` is one precompiled regex that follows spaCy's English rules
  (`do|n't`, `it|'s`; `U.S.`, `e.g.`, `Mr.`, `J.` keep their period; hyphens between letters,
  `a,b`, `a:b`, `km/h`, `10|km` split; `3.5`, `1,000`, `10:30`, `COVID-19`, URLs, e-mail addresses
  and `:)` do not), run only on the pieces of text that are not plain words; sentences end where
  the sentencizer ends them (a terminal token followed by a non-punctuation token). Not copied:
  spaCy's long tail of special cases (`gon|na`, `can|not`, rare abbreviations). Measured against
  datatrove 0.10.1 itself: on the 60 real articles of shared/data the tokens differ by 0.1% and
  every verdict is the same; on 15,120 texts made from them (cut short, bulleted, ellipsised,
  duplicated, hashed, lower/upper-cased, de-punctuated, ...) 96.9% of verdicts are identical and
  only 9 keep-or-drop verdicts differ (texts whose words were glued together with hyphens); C4
  with filter_no_terminal_punct=True or split_paragraph=False gives datatrove's verdict and text
  on 1,000 of them out of 1,000.
- Sharing. The text is split into lines and words once for all four filters (datatrove splits
  again in each), and n-grams are counted as tuples of words, never built as strings; duplicated
  n-grams are looked for only where a shorter n-gram already repeats. Visible effect: datatrove
  keys duplicated n-grams by their words joined *without* spaces, so it counts "ab c" and "a bc"
  as the same n-gram; here they differ. That matters only for texts of one-letter or digit-only
  words (the rest of the 3.1% above: both drop them, at a different rule).
- Where datatrove would divide by zero (no words, no lines) the ratio is 0 here.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, islice

from crawl2model.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    QualityConfig,
)

# datatrove's TERMINAL_PUNCTUATION (spaCy's sentencizer characters): a line ending in one of these
# counts as punctuated (FineWeb), a token made of one of these ends a sentence.
TERMINAL_PUNCTUATION = frozenset(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944"
    "\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c"
    "\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877"
    "\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e"
    "\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86"
    "\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1"
    "\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238"
    "\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9"
    "\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2"
    "\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d"
    "\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42"
    "\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38"
    "\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
# datatrove's PUNCTUATION_SET: a word made only of these is a symbol, not a word (Gopher quality).
PUNCTUATION = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
) | TERMINAL_PUNCTUATION
_HAS_NON_PUNCTUATION = re.compile("[^" + "".join(sorted(re.escape(c) for c in PUNCTUATION)) + "]")

# Abbreviations spaCy keeps whole with their period ("Mr.", "e.g.", "c."); a period after a
# single capital letter ("J.", "SpaceX.", "U.S.") it keeps anyway. Look-behinds must have a
# fixed width, hence one per length.
_ABBREVIATION_LIST = (
    "e.g i.e a.m p.m Ph.D vs Mr Mrs Ms Dr Prof St Jr Inc Ltd Co Corp Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct "
    "Nov Dec Mt Gov Gen Sen Rep Rev Adm Bros Messrs Calif Mass Wash Fla Ill Mich Minn Tenn Va a b c d e f g h i "
    "j k l m n o p q r s t u v w x y z"
).split()
_ABBREVIATIONS = "|".join(
    rf"(?<=(?<![\w.])(?:{'|'.join(re.escape(a) for a in _ABBREVIATION_LIST if len(a) == size)}))"
    for size in sorted({len(a) for a in _ABBREVIATION_LIST})
)
# Units spaCy splits from the number before them ("10km" -> "10", "km").
_UNITS = "km|cm|mm|m|kg|mg|g|lb|oz|ft|yd|mph|kmh|ha|GB|MB|KB|TB|gb|mb|kb|tb|am|pm|K|G|M|T|%"
_CONTRACTION = r"(?:[sSmdt]|ll|re|ve)\b"  # after an apostrophe: it|'s, I|'m, do|n't (DON'T stays whole)
# One token per match, in spaCy's manner for English (see the module docstring).
_TOKEN = re.compile(
    rf"""
      https?://\S*[^\s.,;:!?()\[\]"'”’]                 # URL, less the punctuation after it
      (?:(?<![A-Z][A-Z])(?<=[A-Z])\.|)                   #   (a period after one capital stays, as in words)
    | (?:[^\W_]+\.)+[a-z]{{2,}}/\S*[^\s.,;:!?()\[\]"'”’]  # twitter.com/name
    | (?<!\S)(?:[:;=]-?[()\[\]DPpO/|]|\)[:;]|<3|w/)(?!\S)  # :)  ;-)  <3  w/
    | \d+(?=(?:{_UNITS})(?!\w)(?!(?<=[A-Z])\.))          # 10|km  6|am  (but 4K.)
    | (?:@|(?<!\w)[+-](?=\d)|(?<![\w.])\.(?=\d)|)[^\W_]+  # a word; @handle, -5, +5, .45
      (?: (?=[.,:/=\-−–—'’&@*^_()\[\]])
          (?: \.(?=[a-z0-9]) | (?<![a-z])\.(?=[^\W_]) | (?<=[A-Z])\.-   # 3.5  example.com  U.S  U.S.-Mexico
            | [,:/=](?=\d) | (?<=[^\W\d_])-(?=\d) | (?<=\d)[−–—](?=\d)  # 1,000  10:30  1/2  x=1  COVID-19  2–3
            | ['’](?!{_CONTRACTION})(?=[^\W\d_])                    # O'Brien, but it|'s
            | [&@*^_()\[\]] )                                       # AT&T  a@b.c  x*y  snake_case  f(x
          [^\W_]+ )*
      (?: (?=\.(?![\w.])) (?:(?<![A-Z][A-Z])(?<=[A-Z])|{_ABBREVIATIONS}) \.   # SpaceX.  U.S.  Mr.  e.g.
        | (?<=[^\W\d_])\++ | -(?![\w-]) | )                                    # C++  pre-
      (?!(?<=n)['’]t\b)                                  # do|n't: the n goes with 't
    | n['’]t\b | ['’]{_CONTRACTION}                      # n't 's 'm 'd 'll 're 've
    | \.\.+ | …+ | --+[-|]* | \|-[-|]*                    # ellipses, dashes, |---|---|
    | \S                                                 # any other character alone
    """,
    re.VERBOSE,
)
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")


def split_words(text: str, _findall=_TOKEN.findall) -> list[str]:
    """The words (and punctuation tokens) of an English text, close to spaCy's tokenizer.

    Tokens never hold whitespace, so the text is cut at whitespace first and the ~80% of pieces
    that are plain words skip the regex."""
    words: list[str] = []
    for piece in text.split():
        if piece.isalpha():
            words.append(piece)
        else:
            words += _findall(piece)
    return words


def _is_punct(token: str) -> bool:
    """spaCy's `is_punct`: every character is Unicode punctuation (category P*)."""
    return all(unicodedata.category(ch)[0] == "P" for ch in token)


def count_sentences(words: list[str]) -> int:
    """Sentences as spaCy's sentencizer finds them: a new one starts at the first token after a
    terminal token ("." "!" "?" ...) that is not punctuation itself."""
    if not words:
        return 0
    sentences, ended = 1, False
    for w in words:
        if w in TERMINAL_PUNCTUATION:
            ended = True
        elif ended and not _is_punct(w):
            sentences += 1
            ended = False
    return sentences


def split_sentences(text: str) -> list[str]:
    """Sentences of a text as the sentencizer cuts them (C4 with split_paragraph=False). spaCy
    also makes a token of whitespace other than one space ("\n", "  "), which starts a sentence
    after a terminal token like any word does."""
    sentences, start, ended, end = [], 0, False, 0
    for w in split_words(text):
        at = text.index(w, end)
        if ended and (not _is_punct(w) or text[end:at] not in ("", " ")):
            sentences.append(text[start:end].strip())
            start, ended = end, False
        end = at + len(w)
        ended = ended or w in TERMINAL_PUNCTUATION
    last = text[start:].strip()
    return [*sentences, last] if last else sentences


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, their characters): every occurrence after the first counts."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def _frac(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


class Doc:
    """A text split once: the filters share its lines, the words of each line, and the words."""

    def __init__(self, text: str, lines: list[str] | None = None, line_words: list[list[str]] | None = None):
        self.text = text
        if lines is not None:
            self.lines = lines
        if line_words is not None:
            self.line_words = line_words

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @cached_property
    def line_words(self) -> list[list[str]]:
        return [split_words(line) for line in self.lines]

    @cached_property
    def words(self) -> list[str]:
        return list(chain.from_iterable(self.line_words))


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str
    detail: str


@dataclass
class QualityResult:
    text: str  # possibly modified (the C4 filter removes lines, as in datatrove)
    signals: dict[str, float]  # the measured signals the rules compared
    reason: str | None  # None = kept
    detail: str  # e.g. "dup_line_frac 0.42 > 0.3"
    filter: str | None  # which filter dropped it


def _measure(signals: dict, name: str, value: float, limit: float | None, above: bool,
             reason: str = "") -> Drop | None:
    """Record a signal; a Drop when it is above (or below) a limit that is set."""
    signals[name] = value
    if limit is None or not (value > limit if above else value < limit):
        return None
    return Drop(reason or name, f"{name} {value:.4g} {'>' if above else '<'} {limit}")


class NGrams:
    """The word n-grams of a text that occur more than once, found without building strings.

    An n-gram can only repeat where its first n-1 words repeat, so after one count over every
    position (for the smallest n asked), each larger n is looked for only at the positions where
    the n before it repeats: few, in real text."""

    def __init__(self, words: list[str]):
        self.words = words
        self.repeated: dict[int, tuple[dict[int, tuple], Counter]] = {}

    def at(self, n: int) -> tuple[dict[int, tuple], Counter]:
        """({position: n-gram} for the n-grams that repeat, in text order; counts of n-grams)."""
        if n not in self.repeated:
            words, shorter = self.words, [m for m in self.repeated if m < n]
            if shorter:
                grams = {p: tuple(words[p:p + n]) for p in self.repeated[max(shorter)][0] if p + n <= len(words)}
                counts = Counter(grams.values())
                grams = {p: g for p, g in grams.items() if counts[g] > 1}
            else:
                counts = Counter(zip(*(islice(words, i, None) for i in range(n))))
                grams = {}
                if len(counts) < len(words) - n + 1:  # something repeats
                    grams = {p: g for p, g in enumerate(zip(*(islice(words, i, None) for i in range(n))))
                             if counts[g] > 1}
            self.repeated[n] = (grams, counts)
        return self.repeated[n]

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram (joined with spaces) times its count; on a tie
        the n-gram seen first, as Counter.most_common(1) does on the joined strings."""
        grams, counts = self.at(n)
        if not grams:  # no n-gram repeats: the first one, once
            return len(" ".join(self.words[:n]))
        top = max(map(counts.__getitem__, grams.values()))
        gram = next(g for g in grams.values() if counts[g] == top)
        return (sum(map(len, gram)) + n - 1) * top

    def duplicate_chars(self, n: int) -> int:
        """datatrove's count of characters in duplicated n-grams: walking the words, an n-gram
        already seen adds its characters (words joined without spaces) and the walk jumps past
        it, else it is remembered and the walk moves one word. Only repeated n-grams can be
        "already seen", so the walk visits their positions alone."""
        seen, chars, resume = set(), 0, 0
        for p, gram in self.at(n)[0].items():
            if p < resume:
                continue
            if gram in seen:
                chars += sum(map(len, gram))
                resume = p + n
            else:
                seen.add(gram)
                resume = p + 1
        return chars


class GopherRepetition:
    """Gopher's repetition rules (Rae et al. 2021, table A1) on lines, paragraphs and n-grams."""

    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig):
        self.cfg = cfg

    def apply(self, doc: Doc, signals: dict) -> Doc | Drop:
        c, text = self.cfg, doc.text
        if not text:
            return Drop("empty", "empty text")
        size = len(text)
        paragraphs = _PARAGRAPH_BREAK.split(text.strip())
        dup, chars = _duplicates(paragraphs)
        drop = (_measure(signals, "dup_para_frac", dup / len(paragraphs), c.dup_para_frac or None, True)
                or _measure(signals, "dup_para_char_frac", chars / size, c.dup_para_char_frac or None, True))
        if drop:
            return drop
        lines = _LINE_BREAKS.split(text)
        dup, chars = _duplicates(lines)
        drop = (_measure(signals, "dup_line_frac", dup / len(lines), c.dup_line_frac or None, True)
                or _measure(signals, "dup_line_char_frac", chars / size, c.dup_line_char_frac or None, True))
        if drop:
            return drop
        ngrams = NGrams(doc.words)
        for n, limit in c.top_n_grams:
            if len(doc.words) >= n:
                value = ngrams.top_chars(n) / size
                if drop := _measure(signals, f"top_{n}_gram_frac", value, limit, True, f"top_{n}_gram"):
                    return drop
        for n, limit in c.dup_n_grams:
            value = ngrams.duplicate_chars(n) / size
            if drop := _measure(signals, f"dup_{n}_gram_frac", value, limit, True, f"duplicated_{n}_n_grams"):
                return drop
        return doc


class GopherQuality:
    """Gopher's quality rules: document length, word length, symbols, bullets, alphabetic words,
    stop words."""

    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig):
        self.cfg = cfg
        self.stop_words = frozenset(cfg.stop_words)

    def apply(self, doc: Doc, signals: dict) -> Doc | Drop:
        c, text, lines = self.cfg, doc.text, doc.lines
        n_tokens = len(doc.words)
        n_words = word_chars = alpha = 0  # words: tokens that are not punctuation only
        for w, k in Counter(doc.words).items():  # each distinct token once
            if w.isalpha():  # the common case (no letter is in PUNCTUATION)
                n_words, word_chars, alpha = n_words + k, word_chars + k * len(w), alpha + k
                continue
            if _HAS_NON_PUNCTUATION.search(w):
                n_words, word_chars = n_words + k, word_chars + k * len(w)
            if any(map(str.isalpha, w)):
                alpha += k
        avg_length = _frac(word_chars, n_words)
        bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
        end_ellipsis = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        rules = (
            ("word_count", n_words, c.min_doc_words, False, "gopher_short_doc"),
            ("word_count", n_words, c.max_doc_words, True, "gopher_long_doc"),
            # datatrove's mean of no words is NaN, which no limit catches
            ("avg_word_length", avg_length, n_words and c.min_avg_word_length, False, "gopher_below_avg_threshold"),
            ("avg_word_length", avg_length, n_words and c.max_avg_word_length, True, "gopher_above_avg_threshold"),
            ("hash_word_ratio", _frac(text.count("#"), n_tokens), c.max_symbol_word_ratio, True,
             "gopher_too_many_hashes"),
            ("ellipsis_word_ratio", _frac(text.count("...") + text.count("…"), n_tokens), c.max_symbol_word_ratio,
             True, "gopher_too_many_ellipsis"),
            ("bullet_lines_ratio", _frac(bullets, len(lines)), c.max_bullet_lines_ratio, True,
             "gopher_too_many_bullets"),
            ("end_ellipsis_lines_ratio", _frac(end_ellipsis, len(lines)), c.max_ellipsis_lines_ratio, True,
             "gopher_too_many_end_ellipsis"),
            # "max_non_alpha_words_ratio" is, as in datatrove, the least share of tokens with a letter
            ("alpha_words_ratio", _frac(alpha, n_tokens), n_tokens and c.max_non_alpha_words_ratio, False,
             "gopher_below_alpha_threshold"),
            # datatrove 0.10 counts the distinct stop words present, not their occurrences
            ("stop_word_count", len(self.stop_words.intersection(doc.words)), c.min_stop_words, False,
             "gopher_enough_stop_words"),
        )
        for name, value, limit, above, reason in rules:
            if drop := _measure(signals, name, value, limit or None, above, reason):
                return drop
        return doc


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_POLICY = re.compile("terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies")
_C4_END_PUNCTUATION = (".", "?", "!", '"', "'")


class C4Quality:
    """C4's rules (Raffel et al. 2020): drop lines that are too short, code or boilerplate, then the
    document when too few sentences are left, or at once for "lorem ipsum" or a curly bracket."""

    name = "c4"

    def __init__(self, cfg: C4Config):
        self.cfg = cfg

    def apply(self, doc: Doc, signals: dict) -> Doc | Drop:
        c = self.cfg
        if c.split_paragraph:
            lines, line_words = doc.lines, doc.line_words
        else:
            lines = split_sentences(doc.text)
            line_words = [None] * len(lines)
        kept, kept_words, sentences = [], [], 0
        for line, words in zip(lines, line_words):
            line = line.strip()
            pieces = line.split()
            if c.max_word_length != -1 and max(map(len, pieces), default=0) > c.max_word_length:
                continue
            if c.remove_citations and "[" in line:
                cited, line = line, _CITATION.sub("", line)
                words = words if line == cited else None
            if c.filter_no_terminal_punct and (not line.endswith(_C4_END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(pieces) < c.min_words_per_line:
                continue
            lower = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in lower:
                return Drop("lorem_ipsum", "the text contains 'lorem ipsum'")
            if c.filter_javascript and "javascript" in lower:
                continue
            if c.filter_curly_bracket and "{" in line:
                return Drop("curly_bracket", "the text contains '{'")
            if c.filter_policy and _POLICY.search(lower):
                continue
            if c.split_paragraph and words is None:
                words = split_words(line)
            if c.min_num_sentences != -1:
                sentences += count_sentences(words) if c.split_paragraph else 1
            kept.append(line)
            kept_words.append(words)
        signals["c4_lines_removed"] = len(lines) - len(kept)
        if drop := _measure(signals, "sentence_count", sentences, c.min_num_sentences, False, "too_few_sentences"):
            return drop
        if not c.split_paragraph:
            return Doc(" ".join(kept).strip())
        text = "\n".join(kept)
        if text == doc.text:
            return doc
        if text != text.strip():  # only when empty lines are kept (min_words_per_line <= 0)
            return Doc(text.strip())
        return Doc(text, kept, kept_words)


class FineWebQuality:
    """FineWeb's own rules (Penedo et al. 2024): lines ending in punctuation, short lines,
    duplicated lines, newlines per word."""

    name = "fineweb"

    def __init__(self, cfg: FineWebConfig):
        self.cfg = cfg

    def apply(self, doc: Doc, signals: dict) -> Doc | Drop:
        c, text = self.cfg, doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return Drop("empty", "no non-empty line")
        punct = sum(1 for line in lines if line[-1] in TERMINAL_PUNCTUATION) / len(lines)
        signals["line_punct_ratio"] = punct
        if punct < c.line_punct_thr and not (punct == 0 and c.line_punct_exclude_zero):
            return Drop("line_punct_ratio", f"line_punct_ratio {punct:.4g} < {c.line_punct_thr}")
        short = sum(1 for line in lines if len(line) <= c.short_line_length) / len(lines)
        newlines = text.count("\n")
        return (
            _measure(signals, "short_line_ratio", short, c.short_line_thr, True)
            or _measure(signals, "char_dup_ratio", _frac(_duplicates(lines)[1], len(text) - newlines),
                        c.char_duplicates_ratio, True)
            or _measure(signals, "list_ratio", _frac(newlines, len(doc.words)), c.new_line_ratio, True)
            or doc
        )


class QualityFilters:
    """The quality filters that are enabled, in FineWeb's order; the first that drops wins."""

    def __init__(self, cfg: QualityConfig):
        chain = (GopherRepetition(cfg.gopher_repetition), GopherQuality(cfg.gopher_quality),
                 C4Quality(cfg.c4), FineWebQuality(cfg.fineweb))
        self.filters = [f for f in chain if f.cfg.enabled]

    def __call__(self, text: str) -> QualityResult:
        doc, signals = Doc(text), {}
        for f in self.filters:
            out = f.apply(doc, signals)
            if isinstance(out, Drop):
                return QualityResult(doc.text, signals, out.reason, out.detail, f.name)
            doc = out
        return QualityResult(doc.text, signals, None, "", None)
