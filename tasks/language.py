"""Language identification with py3langid: keep the configured languages above a score.

    from tasks.language import LanguageFilter
    keep = LanguageFilter(cfg.curate.language)
    lang, score, rejection = keep(text)   # rejection is None when the document is kept

The score is py3langid's normalised probability of the top language (FineWeb kept documents
whose fastText score was >= 0.65; the same threshold is our default). Only the first
`MAX_CHARS` characters are classified: on longer text the verdict is settled by then and
the rest only costs time (classification is linear in length).
"""

from __future__ import annotations

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from crawl2model.config import LanguageConfig
from tasks.records import Rejection

STAGE = "language"
MAX_CHARS = 5_000

_identifier: LanguageIdentifier | None = None


def identifier() -> LanguageIdentifier:
    """The model, loaded once per process (it takes ~0.2 s)."""
    global _identifier
    if _identifier is None:
        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def identify(text: str) -> tuple[str, float]:
    lang, score = identifier().classify(text[:MAX_CHARS].replace("\n", " "))
    return lang, float(score)


class LanguageFilter:
    def __init__(self, cfg: LanguageConfig):
        self.languages = set(cfg.languages)
        self.min_score = cfg.min_score

    def __call__(self, text: str) -> tuple[str, float, Rejection | None]:
        lang, score = identify(text)
        if lang not in self.languages:
            return lang, score, Rejection(STAGE, "wrong-language", f"{lang} ({score:.2f})")
        if score < self.min_score:
            return lang, score, Rejection(STAGE, "low-language-score", f"{lang} {score:.2f} < {self.min_score}")
        return lang, score, None
