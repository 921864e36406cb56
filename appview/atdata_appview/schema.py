"""The AppView's index: PostgreSQL tables folded from the ingestion log.

The AppView lives in the same database as the ingestion service
(:mod:`atdata_ingest.schema`): it reads ``ingest_events`` and never the relay. Every
table here is prefixed ``appview_`` so that the two schemas never collide.

Record tables (one per ``science.alt.dataset.*`` record type), all keyed by
``(did, rkey)`` with these common columns:

- ``uri`` (``at://did/collection/rkey``), ``cid`` (the indexed version's CID),
  ``rev`` (the commit revision that wrote it, a TID), ``seq`` (the ingestion-log
  ``seq`` that wrote it; NULL when it came from a backfill), ``record`` (the record
  value as published, JSON data model), ``created_at`` (the record's ``createdAt``,
  parsed; NULL when unparsable), ``indexed_at`` (when this version was folded in:
  moved only when the record's CID changes, never by a backfill re-reading the
  same version), ``first_indexed_at`` (when the record was first indexed; never
  updated: "recent" pages are keyed on it, so an update between two pages moves
  nothing; indexes ``appview_{entries,schemas,lenses}_first_indexed`` on
  ``(first_indexed_at DESC, did DESC, rkey DESC)``, and for searchDatasets'
  relevance window ``appview_entries_first_indexed_search``, the same key
  including what the filters and the rank read).

  References to other records (``schema_ref``, ``source_schema``/``target_schema``,
  ``dataset_uri``, ``lens_uri``) are stored in DID form (``at://did:.../...``)
  when the record names its target by a handle verified for a DID
  (``appview_accounts.verified_handle``: a mere claim could be anyone's); the
  ``record`` column keeps the text as published. A handle not verified when the
  record is folded stays (lower-cased) in handle form until it is
  (:func:`.indexer.canonicalize_refs`); partial expression indexes
  ``appview_entries_schema_ref_handle``, ``appview_lenses_source_handle``,
  ``appview_lenses_target_handle``, ``appview_labels_dataset_handle``,
  ``appview_lens_verifications_lens_handle`` (on the handle, rows in handle form
  only) find them.

- ``appview_schemas``: ``name``, ``version`` (semver text), ``major``/``minor``/
  ``patch`` and ``prerelease`` (for ordering and ``^1``-style ranges), ``schema_type``,
  ``form`` (``flat``: atdata 0.7; ``envelope``: atdata-lexicon 0.4), ``body`` (the
  JSON Schema object, the envelope's ``content`` for the envelope form),
  ``description``, ``field_count``, ``search`` (weighted tsvector).
- ``appview_entries``: ``name``, ``description``, ``tags`` (text[]), ``license``,
  ``schema_ref`` (AT-URI), ``storage`` (jsonb as published), ``storage_kind``
  (``http`` | ``s3`` | ``blobs`` | ``external``), ``shard_count``, ``checksums``
  (``all`` | ``some`` | ``none``), ``size_samples``/``size_bytes``/``size_shards``,
  ``search`` (tsvector: name A, description B, tags C).
- ``appview_lenses``: ``name``, ``source_schema``/``target_schema`` (AT-URIs),
  ``language``, ``description``.
- ``appview_labels``: ``name``, ``dataset_uri``, ``version``, ``description``.
- ``appview_lens_verifications``: ``lens_uri``, ``lens_commit``, ``method``.

Other tables:

- ``appview_cursor``: one row, the position ``(seq, idx)`` of the last
  ingestion-log row folded in. Advanced in the same transaction as the batch.
  Also: ``ingest_source`` (the ``ingest_cursor.source`` whose seq space the
  position counts in), ``require_verified`` (the live fold's signature policy,
  which drains after a backfill follow), ``horizon`` (log rows stored before it
  belong to an earlier seq space and are never folded), ``resets`` /
  ``reset_at`` / ``reset_reason`` (ingest cursor resets seen), ``gaps`` /
  ``gap_at`` / ``gap_seqs`` (times the log's retention had dropped rows not yet
  folded: ``[cursor seq, oldest retained seq]``).
- ``appview_accounts``: per DID, the current ``handle`` (``#identity``) and
  ``active``/``status`` (``#account``). A ``deleted`` or ``takendown`` account has
  its records purged from every record table; any other inactive status
  (``deactivated``, ``suspended``, ...) keeps them, and queries hide records of
  accounts with ``active = false``. ``rev``: the highest commit rev folded for
  the DID (TID, compared in C collation), below which commits are stale replays
  (:mod:`.indexer`). ``handle`` is only what the account's events *claim*;
  ``verified_handle`` is the handle checked both ways on the network (handle →
  DID, and the DID document's ``alsoKnownAs``; :mod:`.handles`), the only one
  queries resolve or show; ``handle_checked``/``handle_checked_at``: the handle
  last checked and when.
- ``appview_dead_letters``: records refused by validation, with the rule ID, the
  JSON pointer and the reason; never indexed.
- ``appview_schema_compat``: per publisher and schema name, the compatibility
  verdict between each two consecutive versions (semver order), from atdata-gen's
  checker, with its findings; ``from_cid``/``to_cid`` are the CIDs the verdict was
  computed from (:mod:`atdata_appview.history`).
- ``appview_repos``: backfill state per DID (``pending`` | ``backfilling`` |
  ``synced`` | ``failed``), the ``rev`` of the snapshot read, counts, the error.
- ``appview_pending``: live log rows of a repository being backfilled, held
  (durably) until its snapshot is written, then applied in ``(seq, idx)`` order,
  skipping those at or below the snapshot's ``rev`` (with the log row's
  ``verified``/``valid``/``verify_rule``, checked when applied).

:func:`migrate` creates it all idempotently under an advisory lock.
"""

from __future__ import annotations

from typing import Final

import asyncpg

__all__ = ["RECORD_TABLES", "SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION: Final = 2

RECORD_TABLES: Final = {
    "science.alt.dataset.schema": "appview_schemas",
    "science.alt.dataset.entry": "appview_entries",
    "science.alt.dataset.lens": "appview_lenses",
    "science.alt.dataset.label": "appview_labels",
    "science.alt.dataset.lensVerification": "appview_lens_verifications",
}
"""Collection NSID → the table its records are folded into."""

_LOCK_KEY: Final = 0x61707076  # 'appv'

_COMMON: Final = """
    did text NOT NULL,
    rkey text NOT NULL,
    uri text NOT NULL,
    cid text NOT NULL,
    rev text,
    seq bigint,
    record jsonb NOT NULL,
    created_at timestamptz,
    indexed_at timestamptz NOT NULL DEFAULT now(),
    first_indexed_at timestamptz NOT NULL DEFAULT now(),
"""

_DDL: Final = f"""
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE OR REPLACE FUNCTION appview_join_tags(tags text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT array_to_string(tags, ' ') $$;

CREATE TABLE IF NOT EXISTS appview_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS appview_cursor (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq bigint NOT NULL DEFAULT 0,
    idx integer NOT NULL DEFAULT -2,
    updated_at timestamptz NOT NULL DEFAULT now(),
    folded bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0
);
INSERT INTO appview_cursor (id) VALUES (true) ON CONFLICT DO NOTHING;
ALTER TABLE appview_cursor
    ADD COLUMN IF NOT EXISTS ingest_source text,
    ADD COLUMN IF NOT EXISTS require_verified boolean,
    ADD COLUMN IF NOT EXISTS horizon timestamptz,
    ADD COLUMN IF NOT EXISTS resets integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reset_at timestamptz,
    ADD COLUMN IF NOT EXISTS reset_reason text,
    ADD COLUMN IF NOT EXISTS gaps integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS gap_at timestamptz,
    ADD COLUMN IF NOT EXISTS gap_seqs bigint[];

CREATE TABLE IF NOT EXISTS appview_schemas ({_COMMON}
    name text NOT NULL,
    version text NOT NULL,
    major integer NOT NULL,
    minor integer NOT NULL,
    patch integer NOT NULL,
    prerelease text NOT NULL DEFAULT '',
    schema_type text NOT NULL,
    form text NOT NULL,
    body jsonb NOT NULL,
    description text,
    field_count integer NOT NULL DEFAULT 0,
    search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, coalesce(name, '')), 'A') ||
        setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'B')
    ) STORED,
    PRIMARY KEY (did, rkey)
);
CREATE INDEX IF NOT EXISTS appview_schemas_name
    ON appview_schemas (did, name, major, minor, patch);
CREATE INDEX IF NOT EXISTS appview_schemas_byname ON appview_schemas (name);
CREATE INDEX IF NOT EXISTS appview_schemas_uri ON appview_schemas (uri);
CREATE INDEX IF NOT EXISTS appview_schemas_recent
    ON appview_schemas (indexed_at DESC, did DESC, rkey DESC);
CREATE INDEX IF NOT EXISTS appview_schemas_search ON appview_schemas USING gin (search);
CREATE INDEX IF NOT EXISTS appview_schemas_trgm
    ON appview_schemas USING gin (name gin_trgm_ops);

CREATE TABLE IF NOT EXISTS appview_entries ({_COMMON}
    name text NOT NULL,
    description text,
    tags text[] NOT NULL DEFAULT '{{}}',
    license text,
    schema_ref text NOT NULL,
    storage jsonb NOT NULL,
    storage_kind text NOT NULL,
    shard_count integer NOT NULL DEFAULT 0,
    checksums text NOT NULL DEFAULT 'none',
    size_samples bigint,
    size_bytes bigint,
    size_shards integer,
    search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, coalesce(name, '')), 'A') ||
        setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'B') ||
        setweight(to_tsvector('english'::regconfig, appview_join_tags(tags)), 'C')
    ) STORED,
    PRIMARY KEY (did, rkey)
);
CREATE INDEX IF NOT EXISTS appview_entries_uri ON appview_entries (uri);
CREATE INDEX IF NOT EXISTS appview_entries_schema ON appview_entries (schema_ref);
CREATE INDEX IF NOT EXISTS appview_entries_recent
    ON appview_entries (indexed_at DESC, did DESC, rkey DESC);
CREATE INDEX IF NOT EXISTS appview_entries_size
    ON appview_entries (size_bytes DESC NULLS LAST, did DESC, rkey DESC);
-- searchDatasets sort=size keyset: (coalesce(size_bytes, -1), did, rkey) < (...)
CREATE INDEX IF NOT EXISTS appview_entries_size_key
    ON appview_entries ((coalesce(size_bytes, -1)) DESC, did DESC, rkey DESC);
CREATE INDEX IF NOT EXISTS appview_entries_tags ON appview_entries USING gin (tags);
CREATE INDEX IF NOT EXISTS appview_entries_search ON appview_entries USING gin (search);
CREATE INDEX IF NOT EXISTS appview_entries_trgm
    ON appview_entries USING gin (name gin_trgm_ops);

CREATE TABLE IF NOT EXISTS appview_lenses ({_COMMON}
    name text NOT NULL,
    source_schema text NOT NULL,
    target_schema text NOT NULL,
    language text,
    description text,
    PRIMARY KEY (did, rkey)
);
CREATE INDEX IF NOT EXISTS appview_lenses_uri ON appview_lenses (uri);
CREATE INDEX IF NOT EXISTS appview_lenses_source ON appview_lenses (source_schema);
CREATE INDEX IF NOT EXISTS appview_lenses_target ON appview_lenses (target_schema);
CREATE INDEX IF NOT EXISTS appview_lenses_recent
    ON appview_lenses (indexed_at DESC, did DESC, rkey DESC);

CREATE TABLE IF NOT EXISTS appview_labels ({_COMMON}
    name text NOT NULL,
    dataset_uri text NOT NULL,
    version text,
    description text,
    PRIMARY KEY (did, rkey)
);
CREATE INDEX IF NOT EXISTS appview_labels_name ON appview_labels (did, name);
CREATE INDEX IF NOT EXISTS appview_labels_dataset ON appview_labels (dataset_uri);

CREATE TABLE IF NOT EXISTS appview_lens_verifications ({_COMMON}
    lens_uri text NOT NULL,
    lens_commit text NOT NULL,
    method text NOT NULL,
    PRIMARY KEY (did, rkey)
);
CREATE INDEX IF NOT EXISTS appview_lens_verifications_lens
    ON appview_lens_verifications (lens_uri);

CREATE TABLE IF NOT EXISTS appview_accounts (
    did text PRIMARY KEY,
    handle text,
    active boolean NOT NULL DEFAULT true,
    status text,
    seq bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    rev text
);
ALTER TABLE appview_accounts ADD COLUMN IF NOT EXISTS rev text;
CREATE INDEX IF NOT EXISTS appview_accounts_handle ON appview_accounts (handle);
-- handle verification (atdata_appview.handles): what queries resolve and show
ALTER TABLE appview_accounts ADD COLUMN IF NOT EXISTS verified_handle text,
    ADD COLUMN IF NOT EXISTS handle_checked text,
    ADD COLUMN IF NOT EXISTS handle_checked_at timestamptz;
CREATE INDEX IF NOT EXISTS appview_accounts_verified_handle
    ON appview_accounts (verified_handle);
CREATE INDEX IF NOT EXISTS appview_accounts_handle_unchecked ON appview_accounts (did)
    WHERE coalesce(handle, verified_handle) IS DISTINCT FROM handle_checked;
CREATE INDEX IF NOT EXISTS appview_accounts_handle_checked_at
    ON appview_accounts (handle_checked_at) WHERE handle_checked IS NOT NULL;

CREATE TABLE IF NOT EXISTS appview_dead_letters (
    id bigserial PRIMARY KEY,
    seq bigint,
    idx integer,
    did text NOT NULL,
    collection text NOT NULL,
    rkey text NOT NULL,
    cid text,
    rule text NOT NULL,
    pointer text NOT NULL DEFAULT '',
    message text NOT NULL,
    record jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS appview_dead_letters_record
    ON appview_dead_letters (did, collection, rkey);
CREATE INDEX IF NOT EXISTS appview_dead_letters_rule ON appview_dead_letters (rule);

CREATE TABLE IF NOT EXISTS appview_schema_compat (
    did text NOT NULL,
    name text NOT NULL,
    from_version text NOT NULL,
    to_version text NOT NULL,
    from_uri text NOT NULL,
    to_uri text NOT NULL,
    from_cid text,
    to_cid text,
    verdict text NOT NULL,
    declared_bump text,
    needed_bump text,
    findings jsonb NOT NULL DEFAULT '[]',
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (did, name, from_version, to_version)
);
ALTER TABLE appview_schema_compat
    ADD COLUMN IF NOT EXISTS from_cid text, ADD COLUMN IF NOT EXISTS to_cid text;

CREATE TABLE IF NOT EXISTS appview_repos (
    did text PRIMARY KEY,
    state text NOT NULL DEFAULT 'pending',
    source text,
    rev text,
    records integer NOT NULL DEFAULT 0,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS appview_repos_state ON appview_repos (state);

CREATE TABLE IF NOT EXISTS appview_pending (
    did text NOT NULL,
    seq bigint NOT NULL,
    idx integer NOT NULL,
    event_type text NOT NULL,
    action text,
    collection text,
    rkey text,
    cid text,
    rev text,
    record jsonb,
    verified boolean,
    valid text,
    verify_rule text,
    PRIMARY KEY (did, seq, idx)
);
ALTER TABLE appview_pending ADD COLUMN IF NOT EXISTS verified boolean,
    ADD COLUMN IF NOT EXISTS valid text, ADD COLUMN IF NOT EXISTS verify_rule text;

-- first_indexed_at (schema 2): when the record was first indexed, never updated;
-- on a database of schema 1, added and filled from indexed_at once
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['appview_schemas', 'appview_entries', 'appview_lenses',
        'appview_labels', 'appview_lens_verifications']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = t::regclass
                AND attname = 'first_indexed_at' AND NOT attisdropped) THEN
            EXECUTE format('ALTER TABLE %I ADD COLUMN first_indexed_at timestamptz '
                'NOT NULL DEFAULT now()', t);
            EXECUTE format('UPDATE %I SET first_indexed_at = indexed_at', t);
        END IF;
    END LOOP;
END $$;
-- "recent" pages keyed on first_indexed_at (an update does not move a record)
CREATE INDEX IF NOT EXISTS appview_entries_first_indexed
    ON appview_entries (first_indexed_at DESC, did DESC, rkey DESC);
CREATE INDEX IF NOT EXISTS appview_schemas_first_indexed
    ON appview_schemas (first_indexed_at DESC, did DESC, rkey DESC);
CREATE INDEX IF NOT EXISTS appview_lenses_first_indexed
    ON appview_lenses (first_indexed_at DESC, did DESC, rkey DESC);
-- searchDatasets relevance: the window of the newest (first indexed) matches,
-- filtered and ranked from the index alone (as appview_entries_recent_search was
-- on indexed_at, which an update moves)
CREATE INDEX IF NOT EXISTS appview_entries_first_indexed_search
    ON appview_entries (first_indexed_at DESC, did DESC, rkey DESC)
    INCLUDE (search, name, tags, storage_kind, license);
DROP INDEX IF EXISTS appview_entries_recent_search;
-- the inactive accounts, read whole by the facet cache's check (queries)
CREATE INDEX IF NOT EXISTS appview_accounts_inactive
    ON appview_accounts (did) WHERE NOT active;

-- references still naming their target by handle (at://handle/...; no verified
-- handle known when folded): few rows, keyed by the handle, re-canonicalised
-- once the handle is verified (atdata_appview.indexer.canonicalize_refs)
DROP INDEX IF EXISTS appview_entries_schema_by_handle,
    appview_lenses_source_by_handle, appview_lenses_target_by_handle,
    appview_labels_dataset_by_handle, appview_lens_verifications_lens_by_handle;
CREATE INDEX IF NOT EXISTS appview_entries_schema_ref_handle ON appview_entries
    ((split_part(schema_ref, '/', 3))) WHERE schema_ref NOT LIKE 'at://did:%';
CREATE INDEX IF NOT EXISTS appview_lenses_source_handle ON appview_lenses
    ((split_part(source_schema, '/', 3))) WHERE source_schema NOT LIKE 'at://did:%';
CREATE INDEX IF NOT EXISTS appview_lenses_target_handle ON appview_lenses
    ((split_part(target_schema, '/', 3))) WHERE target_schema NOT LIKE 'at://did:%';
CREATE INDEX IF NOT EXISTS appview_labels_dataset_handle ON appview_labels
    ((split_part(dataset_uri, '/', 3))) WHERE dataset_uri NOT LIKE 'at://did:%';
CREATE INDEX IF NOT EXISTS appview_lens_verifications_lens_handle
    ON appview_lens_verifications ((split_part(lens_uri, '/', 3)))
    WHERE lens_uri NOT LIKE 'at://did:%';
"""


async def migrate(conn: asyncpg.Connection) -> None:
    """Create every AppView table, index and function when missing (idempotent;
    safe from several processes at once: one transaction under an advisory lock).
    The ingestion schema (:func:`atdata_ingest.schema.migrate`) is separate and must
    be migrated too; the AppView reads ``ingest_events``. ``conn`` must not be in a
    transaction (``ValueError``). Needs the ``pg_trgm`` extension (PostgreSQL
    contrib; Debian's ``postgresql-15`` ships it)."""
    if conn.is_in_transaction():
        raise ValueError("migrate runs its own transaction: call it outside one")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_DDL)
        await conn.execute(
            "INSERT INTO appview_meta (key, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value "
            "WHERE appview_meta.value::int < EXCLUDED.value::int",
            str(SCHEMA_VERSION),
        )
