"""Loading a dataset by name: ``Dataset.from_atproto("@alice.example/CellCrop@^1")``.

The name is resolved to an entry's AT-URI (:class:`~.names.NameResolver`: the
AppView, then the publisher's PDS), and the entry is loaded as any AT-URI is
(:func:`atdata_runtime.atmosphere.load.load_dataset`: records read from their
owners' repositories and verified). Before anything is compiled or read, the
verified entry and schema are checked against the name
(:meth:`~.names.Resolved.check_entry`: the publisher's repository, the name, a
schema version in the range; for a label, the label record verified in the
publisher's repository naming that entry), so for a name with ``@publisher`` an
index can only fail to find a dataset, never hand over another one. Without
``@publisher`` the AppView chooses whose dataset of that name it is.
"""

from __future__ import annotations

from typing import Any

from ..atmosphere.client import AtmosphereClient, FetchedRecord
from ..atmosphere.load import load_dataset
from .client import AppViewClient
from .names import NameResolver, Resolved

__all__ = ["load_named_dataset"]


def load_named_dataset(
    name: str,
    *,
    appview: AppViewClient | str | None = None,
    fallback: bool = True,
    client: AtmosphereClient | None = None,
    **kwargs: Any,
) -> Any:
    """``Dataset[SampleClass]`` of the entry ``name`` resolves to.

    ``appview``: an :class:`~.client.AppViewClient` or URL (default the
    ``ATDATA_APPVIEW_URL`` setting; none: the publisher's PDS only). ``fallback``:
    ask the publisher's PDS when the AppView cannot answer. ``client``: the
    :class:`~atdata_runtime.atmosphere.AtmosphereClient` that reads the records
    (its identity resolver also resolves the publisher's handle). ``kwargs`` as
    :func:`~atdata_runtime.atmosphere.load.load_dataset`.

    Raises the errors of :meth:`~.names.NameResolver.resolve_dataset` (syntax,
    not found with the sources tried, ambiguous, no AppView configured),
    :class:`~.errors.NameMismatchError` when the verified records are not what
    the name asks for, and those of ``load_dataset``."""
    client = client or AtmosphereClient()
    resolved: Resolved = NameResolver(
        appview, resolver=client.resolver, fallback=fallback
    ).resolve_dataset(name)

    def check(entry: FetchedRecord, schema: FetchedRecord) -> None:
        resolved.check_entry(entry.uri, entry.value, schema.uri, schema.value)

    return load_dataset(resolved.uri, client=client, check=check, **kwargs)
