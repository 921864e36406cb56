"""Runs inside the Python 3.12 environment with atdata 0.7.0b1 (scripts/atdata-env):
atdata's own AppView client against an AppView at a URL.

Two modes:

* ``python atdata_appview_side.py`` (line mode, tests/appview/test_e2e.py): prints
  ``{"ready": true}`` once atdata is imported, then for each stdin line
  ``{"appview": URL, "calls": [job, ...]}`` prints one line, the JSON list of the
  jobs' values (an error is ``{"error": exception class, "message": text,
  "status": HTTP status or null}``);
* ``python atdata_appview_side.py APPVIEW_URL`` (batch mode,
  tests/appview/test_atdata_client.py): stdin a JSON list of jobs, stdout a JSON
  list of results, each ``{"ok": value, "warnings": [...]}`` or the error object
  above with ``"warnings"`` (atdata's log warnings during the job).

Every call goes through atdata's public client: ``Atmosphere(appview=URL)``
(no login: AppView queries are public), ``Atmosphere.search_datasets`` /
``search_lenses`` / ``describe_service`` / ``get_entries`` / ``xrpc_query``,
``atdata.search.AppViewSearchBackend``, and the loaders ``SchemaLoader``
(``resolve``, ``list_all``), ``DatasetLoader`` (``get``, ``list_all``),
``LensLoader`` (``list_all``, ``find_by_schemas``) and ``LabelLoader``
(``resolve``). The loaders fall back to the publisher's PDS when the AppView
fails; here every fallback path of the client raises ``FallbackUsed`` instead, and
atdata's "falling back" warnings are returned with the result, so an answer can
only have come from the AppView.

Ops (a job is ``{"op": ..., args}``): ``search_datasets`` (q, tags, schema_ref,
repo, limit), ``backend`` (text, tags, schema_ref, repo, limit, cursor) →
``{"items": [{uri, name, description, tags, schema_ref, source, record}],
"cursor", "source"}``, ``backend_pages`` (as ``backend``, following cursors) →
the AT-URIs of each page, ``health_check``, ``describe_service``, ``get_entries`` (uris), ``get_entry``
(uri), ``list_entries`` (repo, limit), ``resolve_schema`` (handle, schema_id,
version, build) → ``{"record", "class", "fields": {name: annotation}}`` of the type
atdata builds from the record (``_schema_to_type``; with ``build`` false only the
record), ``list_schemas`` (repo, limit),
``list_lenses`` (repo, limit), ``find_lenses`` (source, target),
``search_lenses`` (source, target, limit), ``resolve_label`` (handle, name,
version), ``xrpc`` (nsid, params).
"""

import json
import logging
import sys

from atdata.atmosphere.client import Atmosphere
from atdata.atmosphere.labels import LabelLoader
from atdata.atmosphere.lens import LensLoader
from atdata.atmosphere.records import DatasetLoader
from atdata.atmosphere.schema import SchemaLoader
from atdata.search import AppViewSearchBackend


class FallbackUsed(RuntimeError):
    """atdata left the AppView for the publisher's PDS."""


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _raiser(name):
    def fallback(*args, **kwargs):
        raise FallbackUsed(f"atdata fell back to Atmosphere.{name}")

    return fallback


def client(url):
    atmo = Atmosphere(appview=url)
    for name in (
        "get_record",
        "list_records",
        "list_schemas",
        "list_datasets",
        "list_lenses",
        "list_labels",
        "resolve_did",
    ):
        if hasattr(atmo, name):
            setattr(atmo, name, _raiser(name))
    return atmo


def _opt(job, *keys):
    return {k: job[k] for k in keys if job.get(k) is not None}


def run(atmo, job):
    op = job["op"]
    if op == "search_datasets":
        return atmo.search_datasets(
            job["q"], **_opt(job, "tags", "schema_ref", "repo", "limit")
        )
    if op == "backend":
        res = AppViewSearchBackend(atmo).search(
            **_opt(job, "text", "tags", "schema_ref", "repo", "limit", "cursor")
        )
        items = [
            {
                "uri": i.uri,
                "name": i.name,
                "description": i.description,
                "tags": i.tags,
                "schema_ref": i.schema_ref,
                "source": i.source,
                "record": i.record,
            }
            for i in res.items
        ]
        return {"items": items, "cursor": res.cursor, "source": res.source}
    if op == "backend_pages":
        # every page, following each page's cursor (at most 100 pages)
        backend = AppViewSearchBackend(atmo)
        pages, cursor = [], None
        for _ in range(100):
            kw = _opt(job, "text", "tags", "schema_ref", "repo", "limit")
            res = backend.search(**kw, **({"cursor": cursor} if cursor else {}))
            pages.append([i.uri for i in res.items])
            cursor = res.cursor
            if not cursor:
                break
        return pages
    if op == "health_check":
        return AppViewSearchBackend(atmo).health_check()
    if op == "describe_service":
        return atmo.describe_service()
    if op == "get_entries":
        return atmo.get_entries(job["uris"])
    if op == "get_entry":
        return DatasetLoader(atmo).get(job["uri"])
    if op == "list_entries":
        return DatasetLoader(atmo).list_all(**_opt(job, "repo", "limit"))
    if op == "resolve_schema":
        from atdata._schema_codec import _schema_to_type

        record = SchemaLoader(atmo).resolve(
            job["handle"], job["schema_id"], job.get("version")
        )
        if not job.get("build", True):
            return {"record": record}
        cls = _schema_to_type(record, use_cache=False)
        fields = {
            name: str(getattr(f, "type", f))
            for name, f in getattr(cls, "__dataclass_fields__", {}).items()
        }
        return {"record": record, "class": cls.__name__, "fields": fields}
    if op == "list_schemas":
        return SchemaLoader(atmo).list_all(**_opt(job, "repo", "limit"))
    if op == "list_lenses":
        return LensLoader(atmo).list_all(**_opt(job, "repo", "limit"))
    if op == "find_lenses":
        return LensLoader(atmo).find_by_schemas(job["source"], job.get("target"))
    if op == "search_lenses":
        kw = {"source_schema": job.get("source"), "target_schema": job.get("target")}
        return atmo.search_lenses(
            **{k: v for k, v in kw.items() if v}, **_opt(job, "limit")
        )
    if op == "resolve_label":
        return LabelLoader(atmo).resolve(job["handle"], job["name"], job.get("version"))
    if op == "xrpc":
        return atmo.xrpc_query(job["nsid"], params=job.get("params"))
    raise ValueError(f"unknown op {op!r}")


def _error(exc):
    response = getattr(exc, "response", None)
    return {
        "error": type(exc).__name__,
        "message": str(exc)[:500],
        "status": getattr(response, "status_code", None),
    }


def batch(url):
    atmo = client(url)
    handler = Warnings()
    logging.getLogger().addHandler(handler)
    logging.getLogger("atdata").addHandler(handler)
    out = []
    for job in json.load(sys.stdin):
        handler.messages = []
        try:
            result = {"ok": run(atmo, job)}
        except Exception as exc:  # noqa: BLE001 (reported to the test, which decides)
            result = _error(exc)
        result["warnings"] = list(handler.messages)
        out.append(result)
    json.dump(out, sys.stdout)


def lines():
    print(json.dumps({"ready": True}), flush=True)
    clients = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        url = request["appview"]
        atmo = clients.get(url) or clients.setdefault(url, client(url))
        answers = []
        for job in request["calls"]:
            try:
                answers.append(run(atmo, job))
            except Exception as exc:  # noqa: BLE001 (reported to the test, which decides)
                answers.append(_error(exc))
        print(json.dumps(answers), flush=True)


def main():
    if len(sys.argv) > 1:
        batch(sys.argv[1])
    else:
        lines()


if __name__ == "__main__":
    main()
