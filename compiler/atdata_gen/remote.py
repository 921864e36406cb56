"""``atdata-gen pull`` and ``atdata-gen publish``: the network commands.

Connection settings come from options or the environment: ``ATDATA_HANDLE`` (the
account), ``ATDATA_PASSWORD`` (an app password; only needed when no saved session
is valid), ``ATDATA_PDS_URL`` (default: from the account's DID document),
``ATDATA_PLC_URL`` (default ``https://plc.directory``), ``ATDATA_HANDLE_SERVICE``
(a service answering ``com.atproto.identity.resolveHandle``, e.g. a PDS for its own
handles) and ``ATDATA_APPVIEW_URL`` (the AppView that ``search`` asks and ``pull``
resolves names with; ``--appview`` overrides it). Passwords are never accepted as command-line arguments (they would land
in shell history and ``ps``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from .config import LOCK_NAME, ConfigError, load_config
from .diagnostics import Reporter, render, safe_text
from .sources import load_text, read_reported

__all__ = ["publish_group", "pull_cmd", "search_cmd"]

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _resolver() -> Any:
    from atdata_runtime.atmosphere import IdentityResolver

    return IdentityResolver(
        plc_url=os.environ.get("ATDATA_PLC_URL", "https://plc.directory"),
        handle_service=os.environ.get("ATDATA_HANDLE_SERVICE") or None,
    )


def _lock_path(explicit: Path | None) -> tuple[Path, list[str]]:
    try:
        cfg = load_config(Path.cwd())
    except ConfigError as exc:
        if not exc.missing:  # an unknown key or a wrong value: never ignored
            _config_error(exc)
        return explicit or Path.cwd() / LOCK_NAME, []
    return explicit or cfg.root / LOCK_NAME, [*cfg.schemas, *cfg.lenses]


def _config_error(exc: ConfigError) -> None:
    """Print the located ``CONFIG_*`` errors and exit 2."""
    click.echo(safe_text(str(exc)), err=True)
    sys.exit(EXIT_ERROR)


def _error(message: str) -> None:
    click.echo(f"error: {safe_text(message)}", err=True)
    sys.exit(EXIT_ERROR)


_APPVIEW = click.option(
    "--appview",
    "appview_url",
    metavar="URL",
    default=None,
    help="AppView base URL (default: the ATDATA_APPVIEW_URL setting).",
)


@click.command("pull")
@click.argument("uris", nargs=-1)
@click.option(
    "--update",
    is_flag=True,
    help="Re-fetch every pinned record (re-resolve pinned names); report changes.",
)
@click.option("--lock", "lock_path", type=click.Path(path_type=Path), default=None)
@click.option(
    "--unverified-reads",
    is_flag=True,
    help="Read records with plain repo.getRecord, checked only against the CID "
    "their server returns, instead of the repository's signed proof (logged).",
)
@_APPVIEW
def pull_cmd(
    uris: tuple[str, ...],
    update: bool,
    lock_path: Path | None,
    unverified_reads: bool = False,
    appview_url: str | None = None,
) -> None:
    """Pin remote schema and lens records in atdata-gen.lock: AT-URIs, or schema
    names (@handle/CellCrop@^1, @did:plc:…/CellCrop@1.2.0, CellCrop@^1).

    With no argument, pins the [tool.atdata-gen] schemas and lenses. A name is
    resolved through the AppView (--appview or ATDATA_APPVIEW_URL) to the
    highest version in its range, falling back to the publisher's PDS
    (listRecords) when the AppView is down or not configured; the lock records
    the name as requested, so --update re-resolves it. A record is fetched from
    its owner's PDS, proven by its repository (com.atproto.sync.getRecord: the
    commit's signature by the key in the DID document and the MST path to the
    record; --unverified-reads opts out), checked against the name (publisher,
    name, version in range), validated, and compiled before anything is
    written; a lens record also pins the two schema records it names. On any
    error the lock is left as it was.
    """
    from atdata_runtime.atmosphere import AtmosphereClient, AtmosphereError, AtUri
    from atdata_runtime.atmosphere.records import LENS, SCHEMA

    from .diagnostics import Reporter, render
    from .dynamic import SchemaCompileError, compile_schema_record
    from .frontend.lens_record import parse_lens_record
    from .lock import LockEntry, read_lock, write_lock
    from .sources import load_text

    path, configured = _lock_path(lock_path)
    reporter = Reporter()
    lock = read_lock(path, reporter)
    if reporter.has_errors:
        click.echo(render(list(reporter), "text"), err=True)
        sys.exit(EXIT_ERROR)
    entries = {e.requested: e for e in (lock.entries if lock else [])}
    targets = list(dict.fromkeys([*uris] or configured))
    if update:
        targets = list(dict.fromkeys([*targets, *entries]))
    if not targets:
        _error(
            "nothing to pull: give AT-URIs or list them in [tool.atdata-gen] "
            "schemas / lenses"
        )
    client = AtmosphereClient(
        resolver=_resolver(), verify="server-cid" if unverified_reads else "repo"
    )
    changed = 0
    seen: set[str] = set()
    names: Any = None
    while targets:
        uri = targets.pop(0)
        if uri in seen:
            continue
        seen.add(uri)
        old = entries.get(uri)
        if old is not None and not update:
            continue
        try:
            resolved = None
            if not uri.strip().startswith("at://"):
                names = names or _name_resolver(appview_url, client.resolver)
                resolved = names.resolve_schema(uri)
                at = AtUri.parse(resolved.uri)
            else:
                at = AtUri.parse(uri)
            if at.collection not in (SCHEMA, LENS):
                _error(f"{uri}: not a {SCHEMA} or {LENS} record")
            record = client.get_record(at)
            if resolved is not None:
                resolved.check_schema(record.uri, record.value)
            if at.collection == SCHEMA:
                compile_schema_record(record.value, uri=record.uri, cid=record.cid)
            else:
                raw = json.dumps(
                    {"uri": record.uri, "cid": record.cid, "value": record.value}
                ).encode()
                found = Reporter()
                doc = load_text(record.uri, raw, found)
                lens = parse_lens_record(doc, found) if doc is not None else None
                if lens is None:
                    click.echo(render(list(found), "text"), err=True)
                    _error(f"{record.uri}: not a usable lens record")
                    return
                targets += [lens.source, lens.target]
        except (AtmosphereError, SchemaCompileError, ValueError) as exc:
            _error(str(exc))
            return
        did = AtUri.parse(record.uri).authority
        entries[uri] = LockEntry(record.uri, uri, did, record.cid, record.value)
        named = "" if resolved is None else f"{safe_text(uri)} -> "
        if old is None:
            click.echo(f"pinned {named}{record.uri} ({record.cid})")
            changed += 1
        elif old.uri != record.uri:
            click.echo(
                f"changed {named}{old.uri} -> {record.uri} ({record.cid})"
                + _differs(old.value, record.value)
            )
            changed += 1
        elif old.cid != record.cid:
            click.echo(
                f"changed {named}{record.uri}: {old.cid} -> {record.cid}"
                + _differs(old.value, record.value)
            )
            changed += 1
    wrote = write_lock(path, list(entries.values()))
    click.echo(f"{path}: {'updated' if wrote else 'unchanged'} ({len(entries)} pinned)")


def _appview_client(url: str | None) -> Any:
    """The AppView client of ``--appview URL`` or the ATDATA_APPVIEW_URL setting;
    exits 2 with the reason when there is none or the URL is unusable."""
    from atdata_runtime.appview import AppViewClient
    from atdata_runtime.net import NetworkError

    try:
        return AppViewClient(url)
    except (NetworkError, ValueError) as exc:
        _error(str(exc))


def _name_resolver(url: str | None, resolver: Any) -> Any:
    """A name resolver asking the AppView of ``--appview URL`` (else the
    setting; with neither, the publisher's PDS only)."""
    from atdata_runtime.appview import NameResolver

    return NameResolver(_appview_client(url) if url else None, resolver=resolver)


# -- search -----------------------------------------------------------------------

_SORTS = ("relevance", "recent", "size")
_COLUMNS = ("NAME", "PUBLISHER", "SCHEMA", "SIZE", "TAGS", "AT-URI")
_WIDTHS = (32, 24, 28, 9, 28, 0)  # 0: never cut (an AT-URI is copied whole)


def _width(text: str) -> int:
    """Terminal columns of ``text`` (East Asian wide/fullwidth 2, combining 0)."""
    import unicodedata

    return sum(
        0
        if unicodedata.combining(ch)
        else 2
        if unicodedata.east_asian_width(ch) in ("W", "F")
        else 1
        for ch in text
    )


def _cell(value: object, width: int) -> str:
    """``value`` as one table cell: hostile text made inert (control, bidi and
    other format characters shown as ``\\uXXXX`` escapes, so one line) and cut
    to ``width`` columns (``0``: never), never inside an escape."""
    from atdata_runtime.appview.errors import clean_text

    if value is None:
        return "-"
    pieces = [clean_text(ch, 1) for ch in str(value)[:2000]]
    if not width or sum(_width(p) for p in pieces) <= width:
        return "".join(pieces)
    out, used = [], 0
    for piece in pieces:
        w = _width(piece)
        if used + w > width - 1:
            break
        out.append(piece)
        used += w
    return "".join(out) + "…"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)  # pragma: no cover


def _row(entry: Any) -> list[str]:
    from atdata_runtime.atmosphere.records import AtUri

    schema = entry.schema_name
    if schema is None:
        try:
            schema = AtUri.parse(entry.schema_ref).rkey
        except ValueError:
            schema = entry.schema_ref
    elif entry.schema_version:
        schema = f"{schema}@{entry.schema_version}"
    size = entry.size.bytes_ if entry.size is not None else None
    values = [
        entry.name,
        entry.handle or entry.did,
        schema,
        _size(size),
        ", ".join(entry.tags or []) or "-",
        entry.uri,
    ]
    return [_cell(v, w) for v, w in zip(values, _WIDTHS, strict=True)]


def _table(rows: list[list[str]]) -> str:
    widths = [
        max([_width(h), *(_width(r[i]) for r in rows)]) for i, h in enumerate(_COLUMNS)
    ]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  ".join(
            c + " " * (widths[i] - _width(c)) if i < len(cells) - 1 else c
            for i, c in enumerate(cells)
        )

    return "\n".join([line(_COLUMNS), *(line(r) for r in rows)])


@click.command("search")
@click.argument("query", required=False, default=None)
@click.option(
    "--tag", "tags", multiple=True, help="Entries with this tag (repeatable: all)."
)
@click.option(
    "--schema",
    help="Schema name (NAME or NAME@RANGE, e.g. CellCrop@^1) or schema AT-URI.",
)
@click.option("--repo", help="Only this publisher (a handle or DID).")
@click.option("--storage", help="Storage kind: http, s3, blobs or external.")
@click.option("--license", "license_", help="Only entries with this licence.")
@click.option(
    "--sort", type=click.Choice(_SORTS), default=None, help="Order (default relevance)."
)
@click.option("--limit", type=click.IntRange(1, 100), default=25, show_default=True)
@click.option("--cursor", help="Cursor of the next page (from --format json).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@_APPVIEW
def search_cmd(
    query: str | None,
    tags: tuple[str, ...],
    schema: str | None,
    repo: str | None,
    storage: str | None,
    license_: str | None,
    sort: str | None,
    limit: int,
    cursor: str | None,
    fmt: str,
    appview_url: str | None,
) -> None:
    """Search the AppView for datasets: full text over name, description and tags,
    filtered by tags, schema, publisher, storage kind and licence.

    Prints a table (name, publisher, schema@version, size, tags, AT-URI; text
    from the records is shown inert: control and bidi characters escaped) or,
    with --format json, the AppView's answer ({entries, cursor}) as validated
    JSON, ASCII-escaped. Load a result with Dataset.from_atproto(AT-URI) or by
    its name. Exit 0 (also for no result), 2 on any error.
    """
    from atdata_runtime.net import NetworkError

    client = _appview_client(appview_url)
    schema_ref = schema if schema and schema.startswith("at://") else None
    try:
        out = client.search_datasets(
            query,
            tags=list(tags) or None,
            schema_ref=schema_ref,
            schema=None if schema_ref else schema,
            repo=repo,
            storage=storage,
            license=license_,
            sort=sort,
            limit=limit,
            cursor=cursor,
        )
    except (NetworkError, ValueError) as exc:
        _error(str(exc))
        return
    if fmt == "json":
        wire = out.to_wire()
        click.echo(json.dumps(wire, indent=2, sort_keys=True, ensure_ascii=True))
        return
    if not out.entries:
        click.echo("no datasets match", err=True)
        return
    click.echo(_table([_row(e) for e in out.entries]))
    if out.cursor:
        click.echo(f"more: --cursor {_cell(out.cursor, 600)}", err=True)


# -- publish ----------------------------------------------------------------------


def _login() -> Any:
    from atdata_runtime.atmosphere import AtmosphereClient, AtmosphereError

    handle = os.environ.get("ATDATA_HANDLE")
    if not handle:
        _error(
            "set ATDATA_HANDLE (and ATDATA_PASSWORD unless a saved session is valid)"
        )
    try:
        return AtmosphereClient.login(
            str(handle),
            os.environ.get("ATDATA_PASSWORD") or None,
            pds_url=os.environ.get("ATDATA_PDS_URL") or None,
            resolver=_resolver(),
        )
    except AtmosphereError as exc:
        _error(str(exc))


def _differs(old: Any, new: Any) -> str:
    """`` (/pointer: old != new; …)``: where two copies of a schema record differ
    (their form aside)."""
    from .checks.recdiff import schema_differences

    found = schema_differences(old, new)
    return f" ({found})" if found else ""


def _conflict(client: Any, exc: Any, records: list[dict[str, Any]]) -> str:
    """What differs between the record already at ``exc.uri`` and the one of
    ``records`` with its name and version (``SCHEMA_VERSION_CONFLICT``); ``""``
    when it cannot be told (the record is gone, the network fails)."""
    from atdata_runtime.atmosphere import AtmosphereError

    try:
        there = client.try_get_record(exc.uri, validate=False)
    except AtmosphereError:
        return ""
    if there is None:
        return ""
    key = (there.value.get("name"), there.value.get("version"))
    for record in records:
        if (record.get("name"), record.get("version")) == key:
            return _differs(there.value, record)
    return ""


def _load_schema(spec: str, version: str | None, form: Any) -> dict[str, Any]:
    """A schema record from a JSON file (plain or ``{uri, cid, value}``) or from a
    ``module:Class`` PackableSample class, in ``form`` (``envelope`` / ``flat``)."""
    from atdata_runtime.samples.schema import convert_schema_record

    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        # the checks every build input gets: regular file, size, depth, syntax,
        # data-model numbers, each located
        reporter = Reporter()
        raw = read_reported(path, reporter)
        doc = None if raw is None else load_text(str(path), raw, reporter)
        if doc is None or reporter.has_errors:
            click.echo(render(list(reporter), "text"), err=True)
            sys.exit(EXIT_ERROR)
        data = doc.value
        if isinstance(data, dict) and isinstance(data.get("value"), dict):
            data = data["value"]
    else:
        module, _, attr = spec.partition(":")
        if not attr:
            _error(f"{spec}: give a .json schema record or module:Class")
        from atdata_runtime.samples.schema import schema_record

        cls = getattr(importlib.import_module(module), attr)
        data = schema_record(cls, form=form)
    if version:
        data = dict(data, version=version)
    try:
        return convert_schema_record(dict(data), form)
    except ValueError as exc:
        _error(f"{spec}: {exc}")
        raise


def _check_hook(policy: Any) -> Any:
    """The ``atdata-gen check`` hook: compares the previous published version with
    the new record under ``policy`` (the project's, read once per command), prints the findings, and
    refuses when a SEMVER rule fails (the version bump is smaller than the changes
    need, or the version is reused)."""

    def hook(previous: Any, record: dict[str, Any]) -> None:
        from .checks.compat import COMPAT_RULES
        from .checks.report import render_findings
        from .checks.runner import run_check

        with tempfile.TemporaryDirectory(prefix="atdata-gen-publish-") as tmp:
            prev = Path(tmp) / "previous" / "schema.json"
            curr = Path(tmp) / "current" / "schema.json"
            prev.parent.mkdir()
            curr.parent.mkdir()
            prev.write_text(
                json.dumps(
                    {"uri": previous.uri, "cid": previous.cid, "value": previous.value}
                )
            )
            curr.write_text(json.dumps(record))
            result = run_check([curr], [str(prev)], policy=policy)
        # The version is the contract: a breaking change under a MAJOR bump is
        # declared (and migrates through a lens); what is refused is a bump too
        # small for the changes, or a reused version (the SEMVER rules).
        failing = [
            f
            for f in result.findings
            if policy.fails(f) and COMPAT_RULES[f.rule].category == "SEMVER"
        ]
        if result.findings:
            click.echo(render_findings(result.findings, policy, "text"), err=True)
        if failing:
            _error(
                f"refusing to publish {record.get('name')} {record.get('version')}: "
                f"atdata-gen check against {previous.uri} fails"
            )

    return hook


@click.group("publish")
def publish_group() -> None:
    """Publish schema records and dataset entries to your PDS."""


@publish_group.command("schema")
@click.argument("specs", nargs=-1, required=True)
@click.option("--version", help="Override the record's version (semver).")
@click.option(
    "--no-check",
    is_flag=True,
    help="Skip atdata-gen check against the previous version.",
)
@click.option(
    "--schema-form",
    "form",
    type=click.Choice(["envelope", "flat"]),
    default="envelope",
    show_default=True,
    help="How the record carries its JSON Schema: envelope (atdata-lexicon 0.4.x, "
    "the pinned lexicons) or flat (atdata 0.7, the only form it reads).",
)
def publish_schema_cmd(
    specs: tuple[str, ...], version: str | None, no_check: bool, form: str
) -> None:
    """Publish schema records (FILE.json or module:Class), each under the record
    key {name}:{version}, in --schema-form. Re-publishing identical content (in
    either form) is a no-op; a changed record under an existing version is refused
    (bump the version)."""
    from atdata_runtime.atmosphere import AtmosphereError, PublishConflictError
    from atdata_runtime.atmosphere.publish import publish_schemas

    records = [_load_schema(s, version, form) for s in specs]
    client = _login()
    from .checks.policy import CheckPolicy

    policy = CheckPolicy()
    try:
        cfg = load_config(Path.cwd())
        policy = CheckPolicy.from_table(cfg.check, cfg.file)
    except ConfigError as exc:
        if not exc.missing:
            _config_error(exc)
    except ValueError as exc:
        _error(str(exc))
    hook = None if no_check else _check_hook(policy)

    def progress(i: int, pub: Any) -> None:
        state = "published" if pub.write.created else "already published"
        click.echo(f"[{i + 1}/{len(records)}] {state}: {pub.write.uri}")

    try:
        publish_schemas(client, records, check=hook, progress=progress)
    except PublishConflictError as exc:
        _error(f"{exc}{_conflict(client, exc, records)}")
    except (AtmosphereError, ValueError) as exc:
        _error(str(exc))


@publish_group.command("entry")
@click.argument(
    "shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option(
    "--schema", "schema_uri", required=True, help="AT-URI of the schema record."
)
@click.option("--name", required=True, help="Display name of the dataset.")
@click.option("--description")
@click.option("--license")
@click.option("--tag", "tags", multiple=True)
@click.option(
    "--blobs", is_flag=True, help="Upload shards as PDS blobs (≤ 50 MiB each)."
)
@click.option("--http-url", "urls", multiple=True, help="URL of each shard, in order.")
@click.option("--s3-bucket")
@click.option("--s3-prefix", default="")
@click.option("--s3-endpoint")
@click.option("--journal-dir", default=".atdata-gen/journal", show_default=True)
def publish_entry_cmd(
    shards: tuple[str, ...],
    schema_uri: str,
    name: str,
    description: str | None,
    license: str | None,
    tags: tuple[str, ...],
    blobs: bool,
    urls: tuple[str, ...],
    s3_bucket: str | None,
    s3_prefix: str,
    s3_endpoint: str | None,
    journal_dir: str,
) -> None:
    """Publish a dataset entry for local tar SHARDS (checksums, counts and sizes
    computed here). Resumable: re-run the same command after a failure."""
    from atdata_runtime.atmosphere import AtmosphereError
    from atdata_runtime.atmosphere.publish import (
        BlobStorage,
        HttpStorage,
        S3Storage,
        publish_entry,
    )

    chosen = sum([blobs, bool(urls), bool(s3_bucket)])
    if chosen != 1:
        _error("choose exactly one storage: --blobs, --http-url … or --s3-bucket")
    storage: Any
    if blobs:
        storage = BlobStorage()
    elif urls:
        storage = HttpStorage(list(urls))
    else:
        storage = S3Storage(str(s3_bucket), s3_prefix, endpoint=s3_endpoint)
    client = _login()

    def progress(step: str, done: int, total: int) -> None:
        click.echo(f"{step}: {done}/{total}", err=True)

    try:
        result = publish_entry(
            client,
            list(shards),
            schema_uri=schema_uri,
            name=name,
            storage=storage,
            description=description,
            tags=tags,
            license=license,
            journal_dir=journal_dir,
            progress=progress,
        )
    except (AtmosphereError, ValueError, OSError) as exc:
        _error(str(exc))
        return
    click.echo(("published " if result.created else "already published ") + result.uri)


def _import_attr(spec: str) -> Any:
    """``module:attr`` imported from the current directory (as ``python -m``)."""
    from .frontend.lens_record import CODE_PATH_RE

    if not CODE_PATH_RE.fullmatch(spec):
        _error(f"{spec!r} is not module:function")
    module, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        _error(f"cannot import {spec}: {exc}")
    return obj


def _schema_uri(cls: type[Any], given: str | None, side: str) -> str:
    if given:
        return given
    source = str(getattr(cls, "schema_source", ""))
    if source.startswith("at://"):
        return source
    _error(
        f"the {side} class {cls.__name__} was not compiled from a published schema "
        f"record (schema_source {source!r}): give --{side}-schema AT-URI"
    )
    return ""


@publish_group.command("lens")
@click.argument("spec")
@click.option(
    "--putter",
    "putter_spec",
    help="module:function of the putter (default: the lens's own, from .putter).",
)
@click.option("--source-schema", help="AT-URI (default: the source class's record).")
@click.option("--target-schema", help="AT-URI (default: the target class's record).")
@click.option(
    "--source-version",
    help="Semver range of source versions (npm syntax; default: exactly the "
    "source class's version).",
)
@click.option("--target-version", help="Semver range of target versions.")
@click.option("--name", help="Display name (default: the getter's name).")
@click.option("--description", help="Default: the getter's docstring, first line.")
@click.option("--remote", help="Git remote to cite (default: origin, else any).")
@click.option(
    "--dry-run", is_flag=True, help="Print the record; do not log in or publish."
)
def publish_lens_cmd(
    spec: str,
    putter_spec: str | None,
    source_schema: str | None,
    target_schema: str | None,
    source_version: str | None,
    target_version: str | None,
    name: str | None,
    description: str | None,
    remote: str | None,
    dry_run: bool,
) -> None:
    """Publish a lens record for SPEC (``module:function``: an ``@lens`` getter,
    or a plain getter with --putter). The code reference comes from git: the
    remote URL, the commit, and the module:function path at that commit. Refuses
    when the function's file is dirty or untracked, or the commit is on no remote
    branch. Re-publishing the same lens is a no-op."""
    import datetime as dt
    import typing

    from atdata_runtime.atmosphere import AtmosphereError
    from atdata_runtime.atmosphere.publish import publish_lens
    from atdata_runtime.atmosphere.records import LENS
    from atdata_runtime.lenses import Lens

    from .frontend.lens_record import version_range
    from .gitref import GitRefError, code_reference

    obj = _import_attr(spec)
    if isinstance(obj, Lens):
        getter, putter = obj.getter, obj.putter_fn
        source, target = obj.source, obj.target
    else:
        getter, putter = obj, None
        hints = typing.get_type_hints(obj) if callable(obj) else {}
        params = [v for k, v in hints.items() if k != "return"]
        if len(params) != 1 or "return" not in hints:
            _error(f"{spec}: annotate the getter as (source: A) -> B")
        source, target = params[0], hints["return"]
    if putter_spec:
        putter = _import_attr(putter_spec)
    if putter is None:
        _error(f"{spec}: the lens has no putter: add @{spec}.putter or give --putter")
    try:
        getter_ref = code_reference(getter, remote=remote)
        putter_ref = code_reference(putter, remote=remote)
    except GitRefError as exc:
        _error(str(exc))
        return
    ranges = {
        "sourceSchemaVersion": source_version
        or getattr(source, "schema_version", None),
        "targetSchemaVersion": target_version
        or getattr(target, "schema_version", None),
    }
    for key, text in ranges.items():
        if text is not None:
            try:
                version_range(str(text))
            except ValueError:
                _error(f"{key} {text!r} is not a semver range (npm syntax)")
    doc = (getattr(getter, "__doc__", None) or "").strip()
    record: dict[str, Any] = {
        "$type": LENS,
        "name": name or getattr(getter, "__name__", spec.partition(":")[2]),
        "sourceSchema": _schema_uri(source, source_schema, "source"),
        "targetSchema": _schema_uri(target, target_schema, "target"),
        "getterCode": getter_ref.to_record(),
        "putterCode": putter_ref.to_record(),
        "language": "python",
        "createdAt": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
    }
    if description or doc:
        record["description"] = (description or doc.splitlines()[0])[:1000]
    record.update({k: str(v) for k, v in ranges.items() if v is not None})
    if dry_run:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    client = _login()
    try:
        result = publish_lens(client, record)
    except (AtmosphereError, ValueError) as exc:
        _error(str(exc))
        return
    click.echo(("published " if result.created else "already published ") + result.uri)
