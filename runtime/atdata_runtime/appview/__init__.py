"""The runtime's side of the AppView: a typed client of its
``science.alt.dataset.*`` queries (:mod:`.client`), semver ranges
(:mod:`.semver`) and names (``@handle/CellCrop@^1``) resolved to AT-URIs through
the AppView, falling back to the publisher's PDS (:mod:`.names`).

Settings: ``ATDATA_APPVIEW_URL``, the AppView's base URL (:data:`APPVIEW_URL_ENV`),
read when a client is made. Needs the ``atproto`` extra (``httpx``; the PDS
fallback reads records with the AT Protocol client).
"""

from .client import AppViewClient, configured_url
from .errors import (
    APPVIEW_URL_ENV,
    AmbiguousNameError,
    AppViewError,
    AppViewNotConfigured,
    AppViewNotFound,
    AppViewQueryError,
    AppViewResponseError,
    AppViewUnavailable,
    NameMismatchError,
    NameNotFoundError,
    NameResolutionError,
    NameSyntaxError,
)
from .names import (
    Name,
    NameResolver,
    Resolved,
    parse_name,
    resolve_dataset,
    resolve_schema,
)
from .semver import Version, VersionRange

__all__ = [
    "APPVIEW_URL_ENV",
    "AmbiguousNameError",
    "AppViewClient",
    "AppViewError",
    "AppViewNotConfigured",
    "AppViewNotFound",
    "AppViewQueryError",
    "AppViewResponseError",
    "AppViewUnavailable",
    "Name",
    "NameMismatchError",
    "NameNotFoundError",
    "NameResolutionError",
    "NameResolver",
    "NameSyntaxError",
    "Resolved",
    "Version",
    "VersionRange",
    "configured_url",
    "parse_name",
    "resolve_dataset",
    "resolve_schema",
]
