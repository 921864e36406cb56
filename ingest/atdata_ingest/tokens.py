"""Bearer tokens of the consumer API: one per consumer app, stored hashed, scoped,
read-only, rate-limited (seed 002 §9-10).

A token is ``atdi_<id>_<secret>``: ``id`` is 16 lowercase hex digits (public: it
names the row, like a key ID), ``secret`` is ``secrets.token_urlsafe(32)`` (43
characters, 256 bits). The table ``ingest_tokens`` keeps only the id and the
SHA-256 of the whole token (32 bytes): the plaintext is returned once by
:func:`create_token` and never stored or logged. SHA-256 without a salt or a slow
KDF is enough for a 256-bit random secret (nothing to brute-force); verification
looks the row up by id and compares digests with :func:`hmac.compare_digest`.

**Scope** (``ingest_tokens.scope``, JSON)::

    {"collections": ["science.alt.dataset.*", "app.bsky.feed.post"],
     "event_types": ["commit", "account"],
     "repos": ["did:plc:abc..."]}

Each key is optional; a missing key leaves that dimension unrestricted, an empty
list is refused at creation. ``collections`` holds NSID globs (:func:`nsid_glob_ok`):
``*``, an exact NSID, or an NSID prefix of whole segments followed by ``.*``
(``science.alt.dataset.*`` matches ``science.alt.dataset.entry`` and
``science.alt.dataset.x.y``, not ``science.alt.dataset`` itself). ``repos`` holds
exact DIDs. A request is inside the scope (:meth:`TokenScope.denies`) when, for each
restricted dimension, the request *filters* on it with a value inside the scope: a
token scoped to ``science.alt.dataset.*`` must pass ``collection=`` with an NSID or
glob inside it, and a request without a collection filter is refused (403
``ScopeDenied``), never silently narrowed. A ``collection`` or ``action`` filter
selects commit operations only, so it satisfies an ``event_types`` scope that lists
``commit``.

Repository events (``#account``, ``#identity``, ``#sync``) belong to no
collection. A request may ask for them alongside its other filters
(``include=account,identity,sync`` in the API); a token scoped to
``collections`` may do so (decision: they are public repository metadata, and
an indexer of some collections must learn that an account was deleted, taken
down or reset), whereas an ``event_types`` scope must list each type asked for
and a ``repos`` scope still requires ``repo=``, which restricts them as well.

Errors raised here are :class:`TokenError` (``.rule``: ``TOKEN_NAME``,
``TOKEN_SCOPE``, ``TOKEN_RATE``, ``TOKEN_EXISTS``) for bad input to
:func:`create_token`, and :class:`AuthError` (``.rule``: ``AUTH_MALFORMED``,
``AUTH_UNKNOWN``, ``AUTH_REVOKED``) from :func:`verify_token`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import orjson

__all__ = [
    "EVENT_TYPES",
    "INVALID_TOKEN",
    "MAX_TOKEN_LENGTH",
    "AuthError",
    "TokenError",
    "TokenInfo",
    "TokenScope",
    "create_token",
    "glob_covers",
    "hash_token",
    "list_tokens",
    "nsid_glob_ok",
    "parse_token",
    "revoke_token",
    "token_by_id",
    "verify_token",
]

#: The ``event_type`` values of ``ingest_events`` (schema.EVENT_COLUMNS).
EVENT_TYPES: Final = ("commit", "identity", "account", "sync", "info")

PREFIX: Final = "atdi_"
_ID_HEX: Final = 16
#: ``atdi_`` + 16 + ``_`` + 43 = 65; anything longer is refused before hashing.
MAX_TOKEN_LENGTH: Final = 128
_TOKEN_RE: Final = re.compile(r"atdi_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A token id; a name of this shape is refused (it could be another token's id).
_ID_RE: Final = re.compile(r"[0-9a-f]{16}")

# NSID syntax (atproto spec "NSID"): domain segments of letters, digits and
# hyphens, a name segment of letters and digits; at most 317 characters.
_SEG: Final = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_FIRST: Final = r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_NAME: Final = r"[a-zA-Z][a-zA-Z0-9]{0,62}"
NSID_PATTERN: Final = rf"{_FIRST}(?:\.{_SEG})+\.{_NAME}"
#: ``*``, an NSID, or whole NSID segments followed by ``.*``.
NSID_GLOB_PATTERN: Final = rf"\*|{NSID_PATTERN}|{_FIRST}(?:\.{_SEG})*\.\*"
MAX_NSID_LENGTH: Final = 317
_GLOB_RE: Final = re.compile(NSID_GLOB_PATTERN)
#: DID syntax (atproto spec "DID"), at most 2048 characters.
DID_PATTERN: Final = r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]"
MAX_DID_LENGTH: Final = 2048
_DID_RE: Final = re.compile(DID_PATTERN)
_MAX_SCOPE_ITEMS: Final = 256
#: The reason of every :class:`AuthError` but ``AUTH_REVOKED``: the same words
#: whether the token was malformed, its id unknown or its secret wrong.
INVALID_TOKEN: Final = "invalid token"


class TokenError(ValueError):
    """Bad input to :func:`create_token` (``rule``, ``reason``)."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class AuthError(Exception):
    """A bearer token that does not authenticate: ``rule`` is ``AUTH_MALFORMED``
    (not ``atdi_<16 hex>_<43 urlsafe>``), ``AUTH_UNKNOWN`` (no such id, or the
    secret does not match) or ``AUTH_REVOKED`` (the right token, revoked).

    ``reason`` is what a client may be told: :data:`INVALID_TOKEN` for a
    malformed and for an unknown token alike (the rule stays on the server), so
    that a guess ``atdi_<id>_<anything>`` never tells whether ``id`` exists;
    ``"token revoked"`` only to a client that presented the whole, right token
    (it knows the token exists)."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


def nsid_glob_ok(glob: str) -> bool:
    """Whether ``glob`` is ``*``, an NSID, or an NSID prefix + ``.*`` (at most 317
    characters)."""
    return len(glob) <= MAX_NSID_LENGTH + 2 and _GLOB_RE.fullmatch(glob) is not None


def glob_covers(scope_glob: str, wanted: str) -> bool:
    """Whether every collection matched by NSID glob ``wanted`` is matched by
    ``scope_glob`` (both already :func:`nsid_glob_ok`).

    ``*`` covers everything; an exact NSID covers only itself; ``p.*`` covers an
    NSID starting with ``p.`` and a glob ``q.*`` whose ``q.`` starts with ``p.``."""
    if scope_glob == "*":
        return True
    if wanted == "*":
        return False
    if not scope_glob.endswith(".*"):
        return wanted == scope_glob
    prefix = scope_glob[:-1]  # "science.alt.dataset."
    if wanted.endswith(".*"):
        return wanted[:-1].startswith(prefix)
    return wanted.startswith(prefix)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenScope:
    """The filters a token may use; ``None`` leaves a dimension unrestricted."""

    collections: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    repos: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TokenScope:
        """Build and check a scope from its JSON object. Raises :class:`TokenError`
        (``TOKEN_SCOPE``) naming the key and the bad item."""
        unknown = set(value) - {"collections", "event_types", "repos"}
        if unknown:
            raise TokenError("TOKEN_SCOPE", f"unknown scope keys {sorted(unknown)}")
        fields: dict[str, tuple[str, ...] | None] = {}
        checks = {
            "collections": (nsid_glob_ok, "an NSID, an NSID prefix + '.*', or '*'"),
            "event_types": (lambda v: v in EVENT_TYPES, f"one of {EVENT_TYPES}"),
            "repos": (
                lambda v: len(v) <= MAX_DID_LENGTH and _DID_RE.fullmatch(v) is not None,
                "a DID",
            ),
        }
        for key, (ok, what) in checks.items():
            items = value.get(key)
            if items is None:
                fields[key] = None
                continue
            if (
                isinstance(items, str | bytes)
                or not isinstance(items, Sequence)
                or not items
                or len(items) > _MAX_SCOPE_ITEMS
            ):
                raise TokenError(
                    "TOKEN_SCOPE",
                    f"scope/{key} must be a list of 1 to {_MAX_SCOPE_ITEMS} items",
                )
            for i, item in enumerate(items):
                if not isinstance(item, str) or not ok(item):
                    raise TokenError(
                        "TOKEN_SCOPE", f"scope/{key}/{i}: {item!r} is not {what}"
                    )
            fields[key] = tuple(items)
        return cls(**fields)

    def to_json(self) -> dict[str, list[str]]:
        """The JSON object stored in ``ingest_tokens.scope`` (restricted keys only)."""
        out: dict[str, list[str]] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v)
        return out

    def denies(
        self,
        *,
        collection: str | None,
        event_type: str | None,
        repo: str | None,
        action: str | None = None,
        include: Sequence[str] = (),
    ) -> str | None:
        """``None`` when filters (already syntax-checked) are inside this scope,
        else the reason they are not (for a 403 ``ScopeDenied``). ``include``:
        the repository event types asked for as well (``include=`` of the
        API: ``account``, ``identity``, ``sync``); a ``collections`` scope
        allows them, an ``event_types`` scope must list each, a ``repos``
        scope needs ``repo=`` as for any request (it restricts them too)."""
        if self.collections is not None:
            if collection is None:
                return (
                    "this token is scoped to collections "
                    f"{list(self.collections)}: pass collection= inside the scope"
                )
            if not any(glob_covers(g, collection) for g in self.collections):
                return f"collection {collection!r} is outside the token's scope"
        if self.event_types is not None:
            implied = "commit" if (collection or action) else None
            wanted = event_type or implied
            if wanted is None:
                return (
                    "this token is scoped to event types "
                    f"{list(self.event_types)}: pass event_type= inside the scope"
                )
            if wanted not in self.event_types:
                return f"event_type {wanted!r} is outside the token's scope"
            for kind in include:
                if kind not in self.event_types:
                    return (
                        f"include {kind!r} is outside the token's event types "
                        f"{list(self.event_types)}"
                    )
        if self.repos is not None:
            if repo is None:
                return "this token is scoped to repos: pass repo= inside the scope"
            if repo not in self.repos:
                return f"repo {repo!r} is outside the token's scope"
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token row without its hash. ``rate_per_second`` (requests/s refilled) and
    ``burst`` (bucket size) feed :mod:`.ratelimit`."""

    id: str
    name: str
    scope: TokenScope
    rate_per_second: float
    burst: int
    created_at: _dt.datetime
    revoked_at: _dt.datetime | None


class _Queryable(Protocol):
    """An asyncpg connection or pool."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetch(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> Any: ...


def hash_token(token: str) -> bytes:
    """SHA-256 (32 bytes) of the whole plaintext token, UTF-8."""
    return hashlib.sha256(token.encode()).digest()


def parse_token(token: str) -> tuple[str, str]:
    """``(id, secret)`` of ``atdi_<id>_<secret>``. Raises :class:`AuthError`
    (``AUTH_MALFORMED``, reason :data:`INVALID_TOKEN`) for anything else,
    without echoing the input."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("AUTH_MALFORMED", INVALID_TOKEN)
    m = _TOKEN_RE.fullmatch(token)
    if m is None:
        raise AuthError("AUTH_MALFORMED", INVALID_TOKEN)
    return m.group(1), m.group(2)


def _info(row: Any) -> TokenInfo:
    scope = row["scope"]
    if isinstance(scope, str):  # jsonb arrives as text without a type codec
        scope = orjson.loads(scope)
    return TokenInfo(
        id=row["id"],
        name=row["name"],
        scope=TokenScope.from_json(scope),
        rate_per_second=float(row["rate_per_second"]),
        burst=int(row["burst"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


_COLUMNS: Final = "id, name, scope, rate_per_second, burst, created_at, revoked_at"


async def create_token(
    conn: _Queryable,
    name: str,
    scope: TokenScope | Mapping[str, Any] | None = None,
    rate: float = 20.0,
    burst: int = 40,
) -> str:
    """Create a token named ``name`` (1-64 of ``[A-Za-z0-9._-]``, unique, and not
    16 lowercase hex digits, the shape of an id: :func:`revoke_token` takes either)
    and return its plaintext, the only time it exists outside the consumer.

    ``rate``: requests per second refilled into the bucket (0 < rate <= 10000);
    ``burst``: bucket size (1..100000). Raises :class:`TokenError`: ``TOKEN_NAME``,
    ``TOKEN_SCOPE``, ``TOKEN_RATE``, ``TOKEN_EXISTS`` (the name is taken)."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise TokenError("TOKEN_NAME", "name must be 1-64 of [A-Za-z0-9._-]")
    if _ID_RE.fullmatch(name):
        raise TokenError(
            "TOKEN_NAME", "a name may not be 16 lowercase hex digits (an id's shape)"
        )
    if scope is None:
        scope = TokenScope()
    elif not isinstance(scope, TokenScope):
        scope = TokenScope.from_json(scope)
    if not isinstance(rate, int | float) or not (0 < rate <= 10_000):
        raise TokenError(
            "TOKEN_RATE", f"rate {rate!r} must be in (0, 10000] per second"
        )
    if not isinstance(burst, int) or not (1 <= burst <= 100_000):
        raise TokenError("TOKEN_RATE", f"burst {burst!r} must be in 1..100000")
    token_id = secrets.token_hex(_ID_HEX // 2)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    row = await conn.fetchrow(
        "INSERT INTO ingest_tokens (id, name, hash, scope, rate_per_second, burst) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
        token_id,
        name,
        hash_token(token),
        orjson.dumps(scope.to_json()).decode(),
        float(rate),
        burst,
    )
    if row is None:
        raise TokenError("TOKEN_EXISTS", f"a token named {name!r} already exists")
    return token


async def revoke_token(
    conn: _Queryable,
    name_or_id: str | None = None,
    *,
    name: str | None = None,
    id: str | None = None,
) -> bool:
    """Revoke one token, named by exactly one of: ``name=`` (its name), ``id=``
    (its 16-hex id), or positional ``name_or_id``, which is an id when it has the
    id's shape (16 lowercase hex digits; :func:`create_token` refuses such names,
    so it cannot be a name) and a name otherwise. At most one row is revoked.

    ``True`` when a live token was revoked now, ``False`` when none matched or it
    was already revoked. Takes effect on the next request (tokens are looked up
    per request) and, on the API's open streams of the token, within its
    ``token_recheck_seconds`` (5 s; the stream ends with an SSE ``error``
    event). Raises :class:`TypeError` unless exactly one is given."""
    given = [v for v in (name_or_id, name, id) if v is not None]
    if len(given) != 1:
        raise TypeError("revoke_token: give exactly one of name_or_id, name=, id=")
    if name_or_id is not None:
        if _ID_RE.fullmatch(name_or_id):
            id = name_or_id
        else:
            name = name_or_id
    column, value = ("id", id) if id is not None else ("name", name)
    row = await conn.fetchrow(
        f"UPDATE ingest_tokens SET revoked_at = now() "
        f"WHERE {column} = $1 AND revoked_at IS NULL RETURNING id",
        value,
    )
    return row is not None


async def list_tokens(conn: _Queryable) -> list[TokenInfo]:
    """Every token (revoked too), by creation time; never the hash."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM ingest_tokens ORDER BY created_at, name"
    )
    return [_info(r) for r in rows]


async def token_by_id(conn: _Queryable, token_id: str) -> TokenInfo | None:
    """The row of ``token_id`` (revoked too; never the hash), or ``None`` when
    there is none: one lookup by primary key. The API's open streams re-read
    their token with it (revocation and scope changes take effect on them too).
    Raises :class:`TokenError` (``TOKEN_SCOPE``) for a stored scope that is not
    valid (edited by hand)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM ingest_tokens WHERE id = $1", token_id
    )
    return None if row is None else _info(row)


async def verify_token(conn: _Queryable, token: str) -> TokenInfo:
    """The live token row of plaintext ``token``. Raises :class:`AuthError`
    (``AUTH_MALFORMED``, ``AUTH_UNKNOWN``: reason :data:`INVALID_TOKEN` for both;
    ``AUTH_REVOKED``: ``"token revoked"``). The digest comparison is
    constant-time; an unknown id costs the same hash as a wrong secret."""
    token_id, _ = parse_token(token)
    digest = hash_token(token)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, hash FROM ingest_tokens WHERE id = $1", token_id
    )
    stored = bytes(row["hash"]) if row is not None else b"\0" * 32
    if not hmac.compare_digest(stored, digest) or row is None:
        raise AuthError("AUTH_UNKNOWN", INVALID_TOKEN)
    if row["revoked_at"] is not None:
        raise AuthError("AUTH_REVOKED", "token revoked")
    return _info(row)
