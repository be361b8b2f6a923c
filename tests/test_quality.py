"""Quality filters: every rule just above and just below its FineWeb/datatrove threshold, C4's
line removal, configurable thresholds, and the real pages of ../shared/data."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
from pathlib import Path
from collections import Counter
from itertools import cycle, islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawl2model.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    QualityConfig,
)
from tasks.quality import (
    C4Quality,
    Doc,
    Drop,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    NGrams,
    QualityFilters,
    count_sentences,
    split_sentences,
    split_words,
)
from tests.conftest import shared

REASONS = {
    "empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
    *(f"top_{n}_gram" for n in (2, 3, 4)), *(f"duplicated_{n}_n_grams" for n in range(5, 11)),
    "gopher_short_doc", "gopher_long_doc", "gopher_below_avg_threshold", "gopher_above_avg_threshold",
    "gopher_too_many_hashes", "gopher_too_many_ellipsis", "gopher_too_many_bullets",
    "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold", "gopher_enough_stop_words",
    "lorem_ipsum", "curly_bracket", "too_few_sentences",
    "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio",
}


# --- text builders -------------------------------------------------------------------------------

def fresh_words():
    """Distinct made-up words of five letters, in a fixed order."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return (a + b + end for a in syllables for b in syllables for end in "nrst")


def prose(sentences: int, per_line: int = 2, words=None) -> str:
    """Plain English-like text that every filter keeps: no n-gram repeats but 'of the'."""
    words = words or fresh_words()
    made = [f"The {next(words)} of the {next(words)} and {next(words)} {next(words)} with {next(words)}."
            for _ in range(sentences)]
    return "\n".join(" ".join(made[i:i + per_line]) for i in range(0, len(made), per_line))


def signals_of(flt, text: str) -> tuple[Drop | Doc, dict]:
    signals: dict = {}
    return flt.apply(Doc(text), signals), signals


def tune(make, flt, signal: str, lo: float, hi: float, steps=range(0, 400)):
    """The first make(k) whose signal lies in (lo, hi]: a text just above or just below a limit."""
    for k in steps:
        text = make(k)
        _, signals = signals_of(flt, text)
        if signal in signals and lo < signals[signal] <= hi:
            return text, signals[signal]
    raise AssertionError(f"no text puts {signal} in ({lo}, {hi}]")


def reason_of(flt, text: str) -> str | None:
    out, _ = signals_of(flt, text)
    return out.reason if isinstance(out, Drop) else None


def test_prose_builder_passes_every_filter():
    result = QualityFilters(QualityConfig())(prose(40))
    assert result.reason is None, result.detail
    assert result.text == prose(40)


# --- Gopher repetition ---------------------------------------------------------------------------

REP = GopherRepetition(GopherRepetitionConfig())


@pytest.mark.parametrize("sep, rule", [("\n\n", "dup_para_frac"), ("\n", "dup_line_frac")])
def test_duplicate_paragraphs_and_lines(sep, rule):
    def text(unique: int, copies: int) -> str:
        return sep.join(prose(2 * unique, per_line=2).split("\n") + ["Short note here."] * (copies + 1))

    above, below = text(unique=8, copies=4), text(unique=9, copies=4)  # 4/13 = 0.31, 4/14 = 0.29
    assert reason_of(REP, above) == rule
    assert signals_of(REP, above)[1][rule] == pytest.approx(4 / 13)
    assert reason_of(REP, below) is None
    assert signals_of(REP, below)[1][rule] == pytest.approx(4 / 14)


@pytest.mark.parametrize("sep, rule", [("\n\n", "dup_para_char_frac"), ("\n", "dup_line_char_frac")])
def test_duplicate_paragraph_and_line_characters(sep, rule):
    long = prose(6, per_line=6)  # one long line, said twice among k short unique ones

    def make(k: int) -> str:
        return sep.join([long] + prose(k, per_line=1, words=islice(fresh_words(), 3000, None)).split("\n") + [long])

    above, value = tune(make, REP, rule, 0.2, 0.22)
    assert reason_of(REP, above) == rule
    assert value == pytest.approx(len(long) / len(above))
    below, _ = tune(make, REP, rule, 0.18, 0.2)
    assert reason_of(REP, below) != rule  # (its repeated 5-grams are what drops it next)


@pytest.mark.parametrize("n, limit", [(2, 0.2), (3, 0.18), (4, 0.16)])
def test_top_ngram(n, limit):
    gram = " ".join(w * 2 for w in islice(fresh_words(), 5000, 5000 + n))  # n words of 10 letters

    def make(k: int) -> str:  # the n-gram once in each of 12 lines, among k + 1 unique words
        words = fresh_words()
        return "\n".join(f"{next(words)} {gram} {' '.join(islice(words, k))}." for _ in range(12))

    above, value = tune(make, REP, f"top_{n}_gram_frac", limit, limit + 0.02, steps=range(40, 0, -1))
    assert reason_of(REP, above) == f"top_{n}_gram"
    assert value == pytest.approx(12 * len(gram) / len(above))
    below, _ = tune(make, REP, f"top_{n}_gram_frac", limit - 0.02, limit, steps=range(40, 0, -1))
    assert reason_of(REP, below) is None


@pytest.mark.parametrize("n, limit", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_duplicated_ngrams(n, limit):
    segment = " ".join(w * 2 for w in islice(fresh_words(), 9000, 9000 + n))  # n words of 10 letters

    def make(k: int) -> str:  # the segment once in each of 10 lines (9 repeats), among k + 1 unique words
        words = fresh_words()
        return "\n".join(f"{next(words)} {segment} {' '.join(islice(words, k))}." for _ in range(10))

    above, value = tune(make, REP, f"dup_{n}_gram_frac", limit, limit + 0.01, steps=range(300, 0, -1))
    assert reason_of(REP, above) == f"duplicated_{n}_n_grams"
    assert value == pytest.approx(9 * 10 * n / len(above))  # characters of the repeats, without spaces
    below, _ = tune(make, REP, f"dup_{n}_gram_frac", limit - 0.01, limit, steps=range(300, 0, -1))
    assert reason_of(REP, below) is None


def test_empty_text_is_dropped_as_datatrove_does():
    assert QualityFilters(QualityConfig())("").reason == "empty"


# --- Gopher quality ------------------------------------------------------------------------------

QUAL = GopherQuality(GopherQualityConfig())


def test_word_count_limits():
    words = ["the", "and"] + list(islice(cycle(fresh_words()), 100_000))
    assert reason_of(QUAL, " ".join(words[:49]) + " .") == "gopher_short_doc"  # "." is no word
    assert reason_of(QUAL, " ".join(words[:50]) + " .") is None
    assert reason_of(QUAL, " ".join(words[:100_001])) == "gopher_long_doc"
    assert reason_of(QUAL, " ".join(words[:100_000])) is None


def test_average_word_length():
    short = ["the", "and"] + ["abc"] * 58
    assert reason_of(QUAL, " ".join(short[:-1] + ["ab"])) == "gopher_below_avg_threshold"  # 2.98
    assert reason_of(QUAL, " ".join(short)) is None  # 3.0
    long = ["the", "and"] + ["abcdefghij"] * 45
    assert reason_of(QUAL, " ".join(long + ["abcdefghijk"] * 15)) == "gopher_above_avg_threshold"  # 10.02
    assert reason_of(QUAL, " ".join(long + ["abcdefghijk"] * 14)) is None  # 10.0


@pytest.mark.parametrize("symbol, rule", [("#", "gopher_too_many_hashes"), ("…", "gopher_too_many_ellipsis"),
                                          ("...", "gopher_too_many_ellipsis")])
def test_hash_and_ellipsis_per_word(symbol, rule):
    words = " ".join(["the", "and"] + list(islice(fresh_words(), 89)))  # 91 tokens
    assert reason_of(QUAL, words + f" {symbol}" * 11 + " done") == rule  # 11 / 103
    assert reason_of(QUAL, words + f" {symbol}" * 10 + " done") is None  # 10 / 102


def test_bullet_lines():
    words = fresh_words()
    lines = [f"the {next(words)} and {next(words)} {next(words)}" for _ in range(100)]
    assert reason_of(QUAL, "\n".join(["• " + s for s in lines[:91]] + lines[91:])) == "gopher_too_many_bullets"
    assert reason_of(QUAL, "\n".join(["- " + s for s in lines[:90]] + lines[90:])) is None


def test_lines_ending_in_ellipsis():
    words = fresh_words()
    lines = [f"the {next(words)} and {next(words)} {next(words)}" for _ in range(100)]
    assert reason_of(QUAL, "\n".join([s + "..." for s in lines[:31]] + lines[31:])) == "gopher_too_many_end_ellipsis"
    assert reason_of(QUAL, "\n".join([s + "…" for s in lines[:30]] + lines[30:])) is None


def test_share_of_words_with_a_letter():
    words = ["the", "and"] + list(islice(fresh_words(), 98))
    numbers = [str(1000 + i) for i in range(21)]
    assert reason_of(QUAL, " ".join(words[:79] + numbers[:21])) == "gopher_below_alpha_threshold"  # 0.79
    assert reason_of(QUAL, " ".join(words[:80] + numbers[:20])) is None  # 0.80


def test_stop_words_are_counted_once_each():
    words = list(islice(fresh_words(), 60))
    assert reason_of(QUAL, " ".join(words + ["the"] * 20)) == "gopher_enough_stop_words"  # one distinct
    assert reason_of(QUAL, " ".join(words + ["the", "of"])) is None
    assert reason_of(QUAL, " ".join(words + ["The", "Of"])) == "gopher_enough_stop_words"  # case counts


# --- C4 ------------------------------------------------------------------------------------------

C4 = C4Quality(C4Config())


def test_c4_removes_lines_as_datatrove_does():
    text = "\n".join([
        "The first line of the page stays here.",
        "Too short",
        "Please enable JavaScript to see the comments.",
        "This site uses cookies to improve your visit.",
        "Read our Privacy Policy and terms of use today.",
        "The second line [1] of the page stays [edit] too [citation needed].",
        "A line with " + "x" * 1001 + " goes.",
        "  The third line stays, stripped of its spaces.  ",
        "Four. Five. Six sentences are enough now.",
    ])
    out, signals = signals_of(C4, text)
    assert isinstance(out, Doc)
    assert out.text == ("The first line of the page stays here.\n"
                        "The second line  of the page stays  too .\n"
                        "The third line stays, stripped of its spaces.\n"
                        "Four. Five. Six sentences are enough now.")
    assert signals == {"c4_lines_removed": 5, "sentence_count": 6}
    # the shared words follow the new text (FineWeb counts them next)
    assert out.words == split_words(out.text)


def test_too_few_sentences():
    five = "One sentence here. Two sentences here.\nThree sentences here.\nFour here! Five here?"
    assert reason_of(C4, five) is None
    assert signals_of(C4, five)[1]["sentence_count"] == 5
    assert reason_of(C4, five.replace("Four here! Five here?", "Four here, five here")) == "too_few_sentences"
    # a line of fewer than 3 words is removed before its sentences count
    assert reason_of(C4, five.replace("Four here! Five here?", "Four sentences here.\nFive.")) == "too_few_sentences"


def test_lorem_ipsum_and_curly_bracket_drop_the_document():
    base = prose(6)
    assert reason_of(C4, base + "\nLorem ipsum dolor sit amet.") == "lorem_ipsum"
    assert reason_of(C4, base + "\nfunction f() { return 1; }") == "curly_bracket"
    # as in datatrove, only lines long enough to be kept are looked at
    assert reason_of(C4, base + "\nLorem ipsum") is None
    assert reason_of(C4, base + "\n{ }") is None


def test_c4_terminal_punctuation_is_off_for_fineweb_and_configurable():
    text = prose(6) + "\nA line without a full stop at the end"
    assert signals_of(C4, text)[0].text == text
    strict = C4Quality(C4Config(filter_no_terminal_punct=True))
    assert signals_of(strict, text)[0].text == prose(6)


# --- FineWeb -------------------------------------------------------------------------------------

FW = FineWebQuality(FineWebConfig())


def lines_of(n: int, end: str = ".") -> list[str]:
    words = fresh_words()
    return [f"The {next(words)} of {next(words)} and {next(words)} {next(words)}{end}" for _ in range(n)]


def test_lines_ending_in_punctuation():
    bare = lines_of(100, end="")
    assert reason_of(FW, "\n".join([s + "." for s in bare[:11]] + bare[11:])) == "line_punct_ratio"  # 0.11
    assert reason_of(FW, "\n".join([s + "!" for s in bare[:12]] + bare[12:])) is None  # 0.12
    assert reason_of(FineWebQuality(FineWebConfig(line_punct_exclude_zero=True)), "\n".join(bare)) is None


def test_short_lines():
    long, words = lines_of(100), fresh_words()
    short = [f"Yes {next(words)} {next(words)}." for _ in range(100)]  # 16 characters
    assert reason_of(FW, "\n".join(short[:68] + long[68:])) == "short_line_ratio"  # 0.68
    assert reason_of(FW, "\n".join(short[:67] + long[67:])) is None  # 0.67


def test_duplicated_line_characters():
    def make(k: int) -> str:
        lines = lines_of(k + 10)
        return "\n".join(lines + lines[:1])

    above, value = tune(make, FW, "char_dup_ratio", 0.01, 0.011)
    assert reason_of(FW, above) == "char_dup_ratio"
    assert value == pytest.approx(len(above.split("\n")[0]) / len(above.replace("\n", "")))
    below, _ = tune(make, FW, "char_dup_ratio", 0.009, 0.01)
    assert reason_of(FW, below) is None


def test_newlines_per_word():
    words = fresh_words()
    three = [f"{next(words)}{next(words)}{next(words)} {next(words)}{next(words)}{next(words)}." for _ in range(60)]
    four = [f"{next(words)}{next(words)}{next(words)} {next(words)}{next(words)}{next(words)} {next(words)}."
            for _ in range(60)]  # long lines of 3 and 4 tokens

    def make(k: int) -> str:
        return "\n".join(three[:60 - k] + four[:k])

    above, value = tune(make, FW, "list_ratio", 0.3, 0.32, steps=range(0, 61))
    assert reason_of(FW, above) == "list_ratio"
    assert value == pytest.approx(above.count("\n") / len(split_words(above)))
    below, _ = tune(make, FW, "list_ratio", 0.28, 0.3, steps=range(0, 61))
    assert reason_of(FW, below) is None


def test_fineweb_empty():
    assert reason_of(FW, " \n\n\t\n") == "empty"


# --- the chain and its configuration -------------------------------------------------------------

def test_first_dropping_filter_wins_and_reports_itself():
    text = "\n".join(["the same line said again and again"] * 5)  # repetitive AND too short
    result = QualityFilters(QualityConfig())(text)
    assert (result.filter, result.reason) == ("gopher_repetition", "dup_line_frac")
    assert result.detail == "dup_line_frac 0.8 > 0.3"
    assert result.signals["dup_line_frac"] == pytest.approx(0.8)
    assert "word_count" not in result.signals  # later filters did not run

    cfg = QualityConfig()
    cfg.gopher_repetition.enabled = False
    result = QualityFilters(cfg)(text)
    assert (result.filter, result.reason) == ("gopher_quality", "gopher_short_doc")


def test_thresholds_come_from_the_config():
    words = ["the", "and"] + list(islice(fresh_words(), 45))
    text = " ".join(words) + "."
    cfg = QualityConfig()
    cfg.gopher_repetition.enabled = False
    assert QualityFilters(cfg)(text).reason == "gopher_short_doc"
    cfg.gopher_quality.min_doc_words = 40
    assert QualityFilters(cfg)(text).reason != "gopher_short_doc"
    cfg.gopher_quality.min_doc_words = 0  # 0 switches a Gopher rule off, as in datatrove
    assert QualityFilters(cfg)(text).reason != "gopher_short_doc"

    spam = "\n".join(prose(20).split("\n") + ["Buy now."] * 4)  # 3 of 14 lines repeat: 0.21
    assert QualityFilters(QualityConfig())(spam).reason is None
    cfg = QualityConfig()
    cfg.gopher_repetition.dup_line_frac = 0.2
    assert QualityFilters(cfg)(spam).reason == "dup_line_frac"

    cfg = QualityConfig()
    cfg.c4.min_num_sentences = 100
    assert QualityFilters(cfg)(prose(40)).reason == "too_few_sentences"
    cfg.c4.enabled = False
    assert QualityFilters(cfg)(prose(40)).reason is None


def test_kept_document_reports_every_signal():
    result = QualityFilters(QualityConfig())(prose(40))
    assert result.reason is None and result.filter is None and result.detail == ""
    assert set(result.signals) == {
        "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
        "top_2_gram_frac", "top_3_gram_frac", "top_4_gram_frac", *(f"dup_{n}_gram_frac" for n in range(5, 11)),
        "word_count", "avg_word_length", "hash_word_ratio", "ellipsis_word_ratio", "bullet_lines_ratio",
        "end_ellipsis_lines_ratio", "alpha_words_ratio", "stop_word_count",
        "c4_lines_removed", "sentence_count",
        "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio",
    }
    assert result.signals["word_count"] == 400 and result.signals["stop_word_count"] == 4
    assert result.signals["sentence_count"] == 40


def test_config_defaults_are_datatrove_fineweb_ones():
    cfg = QualityConfig()
    assert cfg.gopher_repetition.top_n_grams == [(2, 0.2), (3, 0.18), (4, 0.16)]
    assert cfg.gopher_repetition.dup_n_grams == [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.1)]
    assert (cfg.gopher_quality.min_doc_words, cfg.gopher_quality.max_non_alpha_words_ratio) == (50, 0.8)
    assert cfg.c4.filter_no_terminal_punct is False  # FineWeb's C4QualityFilter(filter_no_terminal_punct=False)
    assert (cfg.fineweb.line_punct_thr, cfg.fineweb.short_line_thr, cfg.fineweb.char_duplicates_ratio,
            cfg.fineweb.new_line_ratio) == (0.12, 0.67, 0.01, 0.3)


# --- words, sentences, n-grams -------------------------------------------------------------------

def test_words_are_split_as_spacy_splits_english():
    # spaCy 3.8 spacy.blank("en"), which datatrove 0.10 uses for English, gives exactly these
    assert split_words("Don't stop: it's well-known that U.S. e.g. Mr. Smith's 3.5 1,000 10:30") == [
        "Do", "n't", "stop", ":", "it", "'s", "well", "-", "known", "that", "U.S.", "e.g.", "Mr.", "Smith", "'s",
        "3.5", "1,000", "10:30"]
    assert split_words('"quoted" end.Next (x) $100 100% J. Smith. students\' it’s http://example.com/a?b=1.') == [
        '"', "quoted", '"', "end", ".", "Next", "(", "x", ")", "$", "100", "100", "%", "J.", "Smith", ".",
        "students", "'", "it", "’s", "http://example.com/a?b=1", "."]
    assert split_words("Wait... what…? a--b O'Brien can't AT&T @user") == [
        "Wait", "...", "what", "…", "?", "a", "--", "b", "O'Brien", "ca", "n't", "AT&T", "@user"]


def test_sentences_end_where_spacys_sentencizer_ends_them():
    assert count_sentences(split_words('Hello world. This is it." Yes! no? ok')) == 5
    assert count_sentences(split_words("Mr. Smith went to Washington. He stayed")) == 2
    assert count_sentences([]) == 0
    # spaCy's own cuts of these (datatrove's split_into_sentences)
    assert split_sentences('Hello world. This is it." Yes! no? ok') == [
        "Hello world.", 'This is it."', "Yes!", "no?", "ok"]
    assert split_sentences("pollution.\n“I’m here. Mr. Smith. (x)") == [
        "pollution.", "“I’m here.", "Mr. Smith. (", "x)"]


def test_c4_by_sentence():
    c4 = C4Quality(C4Config(split_paragraph=False))
    out, signals = signals_of(c4, "One two three.\nFour five six. Seven. Eight nine ten! A b c d? Yes it is.")
    assert out.text == "One two three. Four five six. Eight nine ten! A b c d? Yes it is."  # "Seven." is short
    assert signals["sentence_count"] == 5


def naive_top_chars(words: list[str], n: int) -> int:
    """datatrove's find_top_duplicate on its space-joined n-grams."""
    gram, count = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1)).most_common(1)[0]
    return len(gram) * count


def naive_duplicate_chars(words: list[str], n: int) -> int:
    """datatrove's find_all_duplicate, word by word."""
    seen, chars, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = "".join(words[i:i + n])
        if gram in seen:
            chars, i = chars + len(gram), i + n
        else:
            seen.add(gram)
            i += 1
    return chars


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["aa", "bb", "cc", "dd"]), max_size=60))
def test_ngram_shortcuts_give_datatroves_numbers(words):
    # words of one length: joining them without spaces is unambiguous, as in real text
    ngrams = NGrams(words)
    for n in (2, 3, 4):
        if len(words) >= n:
            assert ngrams.top_chars(n) == naive_top_chars(words, n)
    for n in range(5, 11):
        assert ngrams.duplicate_chars(n) == naive_duplicate_chars(words, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab .,!?#-•…'\"{}[]\n\t1") + ["the ", "and ", "Lorem ipsum ", "x" * 1001]),
                max_size=300).map("".join) | st.text(max_size=300))
def test_any_text_gets_a_known_verdict(text):
    result = QualityFilters(QualityConfig())(text)
    assert result.reason is None or result.reason in REASONS
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in result.signals.values())


# --- real pages ----------------------------------------------------------------------------------

def extract(path, **options) -> str | None:
    trafilatura = pytest.importorskip("trafilatura")
    data = path.read_bytes()
    return trafilatura.extract(gzip.decompress(data) if path.suffix == ".gz" else data, **options)


def test_repetitive_spam_page_is_dropped_by_gopher_repetition():
    text = extract(shared("html", "bad", "repetitive-spam.html"))
    result = QualityFilters(QualityConfig())(text)
    assert result.filter == "gopher_repetition"
    assert result.reason == "top_2_gram"  # trafilatura keeps one copy; "buy cheap watches now" repeats within it


def test_boilerplate_only_page_is_dropped():
    text = extract(shared("html", "bad", "boilerplate-only.html"))
    assert text.startswith("Home")  # trafilatura's navigation and cookie text, 10 words
    result = QualityFilters(QualityConfig())(text)
    # datatrove 0.10 drops it at the same rule: its first 3-gram ("Home | About") is 21% of 57 characters
    assert (result.filter, result.reason) == ("gopher_repetition", "top_3_gram")
    assert reason_of(QUAL, text) == "gopher_short_doc"  # and too few words, had it got that far


def test_most_real_articles_are_kept():
    py3langid = pytest.importorskip("py3langid")
    pages = sorted(shared("html", "articles").glob("*.html.gz"))
    assert len(pages) == 60
    check = QualityFilters(QualityConfig())
    kept, english, english_kept, reasons = 0, 0, 0, Counter()
    for page in pages:
        text = extract(page, favor_precision=True, include_tables=True, include_comments=False)
        result = check(text)
        kept += result.reason is None
        reasons[result.reason] += 1
        if py3langid.classify(text)[0] == "en":
            english += 1
            english_kept += result.reason is None
    # measured: 44 of 60 kept (73%), the same 44 datatrove 0.10.1 keeps; of the 51 English pages 43
    # (84%). The rest: Portuguese, Russian, Korean and German pages (too few English stop words, or
    # of words with a letter) and English pages of tables, lists and repeated lines.
    assert kept >= 42, reasons
    assert english_kept >= 0.8 * english, reasons


DATATROVE_PYTHON = Path(__file__).resolve().parents[1] / "bench" / ".venvs" / "datatrove" / "bin" / "python"
DATATROVE_VERDICTS = """
import json, sys
from datatrove.data import Document
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
chain = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
         FineWebQualityFilter()]
verdicts = []
for text in json.load(sys.stdin):
    doc, reason = Document(text=text, id="x"), None
    for f in chain:
        kept = f.filter(doc)
        if kept is not True:
            reason = kept[1]
            break
    verdicts.append([reason, doc.text])
json.dump(verdicts, sys.stdout)
"""


@pytest.mark.slow
def test_same_verdicts_and_texts_as_datatrove_on_real_articles():
    if not DATATROVE_PYTHON.exists():
        pytest.skip(f"no datatrove 0.10 peer venv at {DATATROVE_PYTHON} (bash bench/setup_peer_venv.sh makes it)")
    texts = [extract(page, favor_precision=True, include_tables=True, include_comments=False)
             for page in sorted(shared("html", "articles").glob("*.html.gz"))]
    done = subprocess.run([str(DATATROVE_PYTHON), "-c", DATATROVE_VERDICTS], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    check = QualityFilters(QualityConfig())
    ours = [[r.reason, r.text] for r in map(check, texts)]
    theirs = json.loads(done.stdout)
    assert [r for r, _ in ours] == [r for r, _ in theirs]
    assert [t for r, t in ours if r is None] == [t for r, t in theirs if r is None]
