#!/usr/bin/env bash
# setup_peer_venv.sh -- create the virtualenv that runs the datatrove peers of the
# benchmarks: curation (bench/datatrove_peer.py, driven by bench/peer.py) and
# MinHash near-dedup (bench/datatrove_minhash.py).
#
# Usage:  bash bench/setup_peer_venv.sh [VENV_DIR]
#         (default VENV_DIR: bench/.venvs/datatrove, git-ignored)
#         PYTHON=/path/to/python3 overrides the interpreter used for the venv.
#
# Why a separate venv: datatrove 0.10.1 pins trafilatura<1.12 (we get 1.11),
# while crawl2model uses a newer trafilatura, so they cannot share .venv.
#
# What is installed, and why (a minimal set instead of datatrove[processing],
# which would also pull fasttext, nltk, tokenizers, inscriptis, tldextract, ...
# that none of the steps the benchmark uses need):
#   datatrove==0.10.1          the pipeline/executor
#   trafilatura>=1.8,<1.12     datatrove's Trafilatura extractor (its pin)
#   lxml_html_clean            trafilatura 1.11 imports lxml.html.clean, which
#                              lxml>=5.2 moved out into this package
#   warcio faust-cchardet python-magic
#                              WarcReader's declared deps (python-magic needs
#                              the system libmagic.so.1; checked below)
#   orjson                     JsonlWriter
#   regex                      datatrove.utils.text
#   spacy                      word/sentence splitting in the Gopher, C4 and
#                              FineWeb filters: for English datatrove uses
#                              spacy.blank("en") + "sentencizer", which are
#                              rule-based and ship inside the spacy wheel
#                              (no model download, no nltk punkt needed)
#   py3langid                  our English filter (replaces datatrove's
#                              fastText LanguageFilter, which downloads weights
#                              from the Hugging Face hub at run time)
#   xxhash<4                   MinHash: HashConfig's default hash function
#                              (xxhash64); the pin is datatrove's own
#                              (its "processing" extra)
#   tokenizers                 MinHash: importing datatrove.pipeline.dedup
#                              (its __init__) imports exact_substrings, which
#                              imports tokenizers; no model is loaded
# Nothing here depends on torch.
#
# Idempotent: if the venv already has datatrove 0.10.1 and every module above
# imports, it does nothing (prints the versions and exits 0).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="${1:-$HERE/.venvs/datatrove}"
PYTHON="${PYTHON:-python3}"
DATATROVE_VERSION="0.10.1"

PACKAGES=(
  "datatrove==${DATATROVE_VERSION}"
  "trafilatura>=1.8.0,<1.12.0"
  "lxml_html_clean"
  "warcio"
  "faust-cchardet"
  "python-magic"
  "orjson"
  "regex"
  "spacy"
  "py3langid"
  "xxhash<4"
  "tokenizers"
)

# Imports that must work for bench/datatrove_peer.py and bench/datatrove_minhash.py to run.
CHECK_PY='
import importlib.metadata as md, sys
assert md.version("datatrove") == sys.argv[1], md.version("datatrove")
import datatrove.executor, datatrove.pipeline.readers, datatrove.pipeline.extractors
import datatrove.pipeline.filters, datatrove.pipeline.writers
import trafilatura, lxml_html_clean, warcio, cchardet, orjson, regex, py3langid
import magic  # needs libmagic.so.1
import xxhash, tokenizers
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
MinhashConfig(hash_config=HashConfig(precision=64))
import spacy
nlp = spacy.blank("en"); nlp.add_pipe("sentencizer")
assert len(list(nlp("One sentence here. And another one.").sents)) == 2
'

print_versions() {
  "$VENV_DIR/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ("datatrove", "trafilatura", "lxml", "lxml_html_clean", "spacy",
             "py3langid", "warcio", "numpy", "huggingface-hub", "faust-cchardet",
             "python-magic", "orjson", "xxhash", "tokenizers"):
    try:
        print(f"  {name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
try:
    md.version("torch"); print("  WARNING: torch is installed in the peer venv")
except md.PackageNotFoundError:
    pass
EOF
}

venv_ok() {
  [ -x "$VENV_DIR/bin/python" ] &&
    "$VENV_DIR/bin/python" -c "$CHECK_PY" "$DATATROVE_VERSION" >/dev/null 2>&1
}

if venv_ok; then
  echo "[setup_peer_venv] $VENV_DIR already has datatrove ${DATATROVE_VERSION}; nothing to do"
  print_versions
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "[setup_peer_venv] creating venv $VENV_DIR with $("$PYTHON" -V 2>&1)"
  mkdir -p "$(dirname "$VENV_DIR")"
  "$PYTHON" -m venv "$VENV_DIR"
fi

echo "[setup_peer_venv] installing: ${PACKAGES[*]}"
# (this machine's pip config names local file:// indexes that pip warns about
# for every package it does not hold; those lines are noise and are dropped)
"$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --quiet "${PACKAGES[@]}" 2>&1 |
  { grep -v "^WARNING: Location 'file:" || true; }

if ! "$VENV_DIR/bin/python" -c "$CHECK_PY" "$DATATROVE_VERSION"; then
  echo "[setup_peer_venv] ERROR: the peer venv does not import cleanly (see above)." >&2
  if ! "$VENV_DIR/bin/python" -c "import magic" >/dev/null 2>&1; then
    echo "[setup_peer_venv] python-magic needs the system library libmagic.so.1:" \
         "apt-get install -y libmagic1" >&2
  fi
  exit 1
fi

end=$(date +%s)
echo "[setup_peer_venv] installed in $((end - start)) s into $VENV_DIR:"
print_versions
echo "[setup_peer_venv] everything in the venv:"
"$VENV_DIR/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | paste -sd' ' | fold -s -w 100 | sed 's/^/  /'
