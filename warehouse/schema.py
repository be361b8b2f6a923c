"""Table layouts: Arrow schemas of the per-shard Parquet files and the DuckDB DDL over them.

Tables (what later stages and outside tools rely on):
  documents    one row per kept document; doc_id is stable across runs (url + content hash)
  rejections   one row per record a stage dropped (quarantined=false) or could not process (true)
  shard_stats  per shard and stage: docs_in = docs_out + docs_dropped + docs_quarantined
  stage_stats  view: shard_stats summed per snapshot and stage (the funnel)
  snapshots    one row per curation run over a set of inputs
  shards       ledger of loaded shards: a shard is loaded once, in one transaction
  stage_runs   ledger of snapshot stages (dedup, pii): which config last ran on which snapshot
  kept_documents  view: documents that dedup did not remove (what tokenizer and training read)

Columns that later stages fill in on `documents` (NULL until that stage ran on the snapshot):
  text_hash, dup_cluster, dup_cluster_size, duplicate_of   dedup (cluster id = its kept doc_id)
  pii_email, pii_ip, pii_phone, pii_card, pii_iban         pii (replacements made per type)
"""

import pyarrow as pa

# Pipeline order of the curation stages, as they appear in stage_stats and the funnel.
CURATE_STAGES = ("crawl", "ingest", "url_filter", "extract", "language", "quality", "store")
# Every row of the funnel, in order: curation, then the snapshot stages (dedup is two rows).
FUNNEL_STAGES = CURATE_STAGES + ("exact_dedup", "near_dedup", "pii")
PII_TYPES = ("email", "ip", "phone", "card", "iban")
PII_COLUMNS = tuple(f"pii_{t}" for t in PII_TYPES)

DOCUMENTS = pa.schema([
    ("doc_id", pa.string()),
    ("url", pa.string()),
    ("domain", pa.string()),
    ("source", pa.string()),
    ("fetched_at", pa.timestamp("us", tz="UTC")),
    ("title", pa.string()),
    ("date", pa.string()),
    ("text", pa.string()),
    ("lang", pa.string()),
    ("lang_score", pa.float64()),
    ("chars", pa.int64()),
    ("quality", pa.map_(pa.string(), pa.float64())),
    ("snapshot", pa.string()),
    ("shard", pa.string()),
])

REJECTIONS = pa.schema([
    ("doc_id", pa.string()),
    ("url", pa.string()),
    ("source", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("quarantined", pa.bool_()),
    ("snapshot", pa.string()),
    ("shard", pa.string()),
])

SHARD_STATS = pa.schema([
    ("snapshot", pa.string()),
    ("shard", pa.string()),
    ("stage", pa.string()),
    ("stage_order", pa.int32()),
    ("docs_in", pa.int64()),
    ("docs_out", pa.int64()),
    ("docs_dropped", pa.int64()),
    ("docs_quarantined", pa.int64()),
    ("bytes", pa.int64()),
    ("seconds", pa.float64()),
])

DDL = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id VARCHAR PRIMARY KEY, url VARCHAR, domain VARCHAR, source VARCHAR, fetched_at TIMESTAMPTZ,
    title VARCHAR, date VARCHAR, text VARCHAR, lang VARCHAR, lang_score DOUBLE, chars BIGINT,
    quality MAP(VARCHAR, DOUBLE), snapshot VARCHAR, shard VARCHAR);
CREATE TABLE IF NOT EXISTS rejections (
    doc_id VARCHAR, url VARCHAR, source VARCHAR, stage VARCHAR, reason VARCHAR, detail VARCHAR,
    quarantined BOOLEAN, snapshot VARCHAR, shard VARCHAR);
CREATE TABLE IF NOT EXISTS shard_stats (
    snapshot VARCHAR, shard VARCHAR, stage VARCHAR, stage_order INTEGER, docs_in BIGINT, docs_out BIGINT,
    docs_dropped BIGINT, docs_quarantined BIGINT, bytes BIGINT, seconds DOUBLE);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot VARCHAR PRIMARY KEY, created_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR,
    config_hash VARCHAR, inputs JSON, counts JSON);
CREATE TABLE IF NOT EXISTS shards (
    shard VARCHAR PRIMARY KEY, snapshot VARCHAR, kind VARCHAR, label VARCHAR, seq BIGINT, loaded_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS stage_runs (
    snapshot VARCHAR, stage VARCHAR, config_hash VARCHAR, finished_at TIMESTAMPTZ, summary JSON,
    PRIMARY KEY (snapshot, stage));
ALTER TABLE documents ADD COLUMN IF NOT EXISTS text_hash VARCHAR;
ALTER TABLE documents ADD COLUMN IF NOT EXISTS dup_cluster VARCHAR;
ALTER TABLE documents ADD COLUMN IF NOT EXISTS dup_cluster_size INTEGER;
ALTER TABLE documents ADD COLUMN IF NOT EXISTS duplicate_of VARCHAR;
""" + "".join(f"ALTER TABLE documents ADD COLUMN IF NOT EXISTS {c} INTEGER;\n" for c in PII_COLUMNS) + \
    "".join(f"ALTER TABLE shard_stats ADD COLUMN IF NOT EXISTS {c} BIGINT DEFAULT 0;\n" for c in PII_COLUMNS) + """
CREATE OR REPLACE VIEW stage_stats AS
    SELECT snapshot, stage, min(stage_order) AS stage_order,
           sum(docs_in)::BIGINT AS docs_in, sum(docs_out)::BIGINT AS docs_out,
           sum(docs_dropped)::BIGINT AS docs_dropped, sum(docs_quarantined)::BIGINT AS docs_quarantined,
           sum(bytes)::BIGINT AS bytes, round(sum(seconds), 3) AS seconds,
           """ + ", ".join(f"sum({c})::BIGINT AS {c}" for c in PII_COLUMNS) + """
    FROM shard_stats GROUP BY snapshot, stage;
CREATE OR REPLACE VIEW kept_documents AS SELECT * FROM documents WHERE duplicate_of IS NULL;
"""
