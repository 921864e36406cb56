"""Consumer tokens (atdata_ingest.tokens) in a real PostgreSQL: stored hashed
only, verified by id and constant-time digest, revoked, scoped by NSID globs; and
the token bucket of atdata_ingest.ratelimit."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import asyncpg
import pytest
from atdata_ingest.ratelimit import RateLimiter, TokenBucket, retry_after_header
from atdata_ingest.tokens import (
    NSID_PATTERN,
    AuthError,
    TokenError,
    TokenScope,
    create_token,
    glob_covers,
    list_tokens,
    nsid_glob_ok,
    parse_token,
    revoke_token,
    token_by_id,
    verify_token,
)
from hypothesis import given, settings
from hypothesis import strategies as st


async def _with_conn(dsn: str, fn: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await fn(conn)
    finally:
        await conn.close()


def db(dsn: str, fn: Any) -> Any:
    return asyncio.run(_with_conn(dsn, fn))


def test_tokens_are_stored_hashed_only(pg_dsn: str) -> None:
    async def go(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
        toks = [
            await create_token(conn, f"app{i}", {"collections": ["app.bsky.*"]})
            for i in range(5)
        ]
        rows = await conn.fetch("SELECT t::text AS t, hash FROM ingest_tokens t")
        dumps = [r["t"] for r in rows]
        # every representation of the hash too
        dumps += [bytes(r["hash"]).hex() for r in rows]
        dumps += [bytes(r["hash"]).decode("latin-1") for r in rows]
        return toks, dumps

    toks, dumps = db(pg_dsn, go)
    table = "\n".join(dumps)
    for tok in toks:
        assert re.fullmatch(r"atdi_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", tok)
        token_id, secret = parse_token(tok)
        assert tok not in table
        # no substring of the secret (8 characters is 48 bits) is stored anywhere
        for i in range(len(secret) - 7):
            assert secret[i : i + 8] not in table, (tok, i)
        # the stored digest is SHA-256 of the whole token
        assert hashlib.sha256(tok.encode()).hexdigest() in table
        assert token_id in table  # the id is public: the row's key
    assert len(set(toks)) == 5


def test_verify_revoke_and_list(pg_dsn: str) -> None:
    async def go(conn: asyncpg.Connection) -> None:
        tok = await create_token(
            conn, "consumer-1", {"event_types": ["commit"]}, rate=2.5, burst=9
        )
        info = await verify_token(conn, tok)
        assert (info.name, info.rate_per_second, info.burst) == ("consumer-1", 2.5, 9)
        assert info.scope == TokenScope(event_types=("commit",))
        assert not hasattr(info, "hash")
        token_id, secret = parse_token(tok)
        wrong = f"atdi_{token_id}_{secret[::-1]}"
        for bad, rule in (
            (wrong, "AUTH_UNKNOWN"),
            (f"atdi_{'f' * 16}_{secret}", "AUTH_UNKNOWN"),
            (tok[:-1], "AUTH_MALFORMED"),
            (tok + "=", "AUTH_MALFORMED"),
            ("atdi_" + tok, "AUTH_MALFORMED"),
            ("x" * 10_000, "AUTH_MALFORMED"),
            ("", "AUTH_MALFORMED"),
        ):
            with pytest.raises(AuthError) as e:
                await verify_token(conn, bad)
            assert e.value.rule == rule, bad
            assert secret not in str(e.value)
            # what a client is told: the same words, whether the id exists or not
            assert e.value.reason == "invalid token", bad
        for guess in (f"atdi_{token_id}_wrong", "atdi_0123456789abcdef_wrong"):
            with pytest.raises(AuthError) as e:
                await verify_token(conn, guess)
            assert (e.value.rule, e.value.reason) == ("AUTH_MALFORMED", "invalid token")
        other = await create_token(conn, "consumer-2")
        assert await revoke_token(conn, token_id) is True  # by id
        assert await revoke_token(conn, "consumer-1") is False  # already revoked
        assert await revoke_token(conn, "nobody") is False
        with pytest.raises(AuthError) as e:
            await verify_token(conn, tok)
        assert (e.value.rule, e.value.reason) == ("AUTH_REVOKED", "token revoked")
        # the stream re-check's lookup: revoked rows too, unknown ids None
        row = await token_by_id(conn, token_id)
        assert row is not None and row.revoked_at is not None
        assert row.scope == TokenScope(event_types=("commit",))
        assert await token_by_id(conn, "f" * 16) is None
        assert (await verify_token(conn, other)).name == "consumer-2"
        assert await revoke_token(conn, "consumer-2") is True  # by name
        listed = await list_tokens(conn)
        assert [t.name for t in listed] == ["consumer-1", "consumer-2"]
        assert all(t.revoked_at is not None for t in listed)
        assert listed[1].scope == TokenScope()

    db(pg_dsn, go)


@pytest.mark.parametrize(
    ("name", "scope", "rate", "burst", "rule"),
    [
        ("", None, 1, 1, "TOKEN_NAME"),
        ("a b", None, 1, 1, "TOKEN_NAME"),
        ("x" * 65, None, 1, 1, "TOKEN_NAME"),
        ("-lead", None, 1, 1, "TOKEN_NAME"),
        ("0123456789abcdef", None, 1, 1, "TOKEN_NAME"),  # an id's shape
        ("ok", {"collections": []}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": "app.bsky.*"}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": ["app.*.post"]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": ["*.post"]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": ["app.bsky%"]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": ["app"]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": [1]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"collections": ["a.b.c"] * 300}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"event_types": ["labels"]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"repos": ["alice.bsky.social"]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"repos": ["did:plc:" + "a" * 3000]}, 1, 1, "TOKEN_SCOPE"),
        ("ok", {"write": True}, 1, 1, "TOKEN_SCOPE"),
        ("ok", None, 0, 1, "TOKEN_RATE"),
        ("ok", None, -1, 1, "TOKEN_RATE"),
        ("ok", None, float("nan"), 1, "TOKEN_RATE"),
        ("ok", None, float("inf"), 1, "TOKEN_RATE"),
        ("ok", None, 1, 0, "TOKEN_RATE"),
        ("ok", None, 1, 1.5, "TOKEN_RATE"),
    ],
)
def test_create_token_refuses_bad_input(
    pg_dsn: str, name: str, scope: Any, rate: float, burst: Any, rule: str
) -> None:
    async def go(conn: asyncpg.Connection) -> None:
        with pytest.raises(TokenError) as e:
            await create_token(conn, name, scope, rate, burst)
        assert e.value.rule == rule
        assert await conn.fetchval("SELECT count(*) FROM ingest_tokens") == 0

    db(pg_dsn, go)


def test_revoke_by_name_or_id_revokes_exactly_one_row(pg_dsn: str) -> None:
    """A name of an id's shape is refused, and a row that has one anyway (made
    before the rule) is never revoked by another token's id: positional
    name_or_id of an id's shape means the id, name=/id= say which."""

    async def go(conn: asyncpg.Connection) -> None:
        tok = await create_token(conn, "alpha")
        token_id, _ = parse_token(tok)
        assert (await create_token(conn, "DEADBEEFDEADBEEF")).startswith("atdi_")
        # a legacy row whose name is alpha's id (what the old create allowed)
        await conn.execute(
            "INSERT INTO ingest_tokens (id, name, hash) VALUES ($1, $2, $3)",
            "f" * 16,
            token_id,
            b"\0" * 32,
        )

        async def live() -> set[str]:
            rows = await conn.fetch(
                "SELECT name FROM ingest_tokens WHERE revoked_at IS NULL"
            )
            return {r["name"] for r in rows}

        assert await live() == {"alpha", token_id, "DEADBEEFDEADBEEF"}
        assert await revoke_token(conn, token_id) is True  # the id: alpha only
        assert await live() == {token_id, "DEADBEEFDEADBEEF"}
        assert await revoke_token(conn, id=token_id) is False  # already revoked
        assert await revoke_token(conn, name=token_id) is True  # the legacy row
        assert await live() == {"DEADBEEFDEADBEEF"}
        assert await revoke_token(conn, id="DEADBEEFDEADBEEF") is False  # a name
        assert await revoke_token(conn, "DEADBEEFDEADBEEF") is True  # not id-shaped
        assert await revoke_token(conn, name="nobody") is False
        for bad in ((), ("alpha",)):
            with pytest.raises(TypeError):
                await revoke_token(conn, *bad, **({"name": "x"} if bad else {}))
        with pytest.raises(TypeError):
            await revoke_token(conn, name="a", id="b")

    db(pg_dsn, go)


def test_duplicate_names_are_refused(pg_dsn: str) -> None:
    async def go(conn: asyncpg.Connection) -> None:
        await create_token(conn, "same")
        with pytest.raises(TokenError) as e:
            await create_token(conn, "same")
        assert e.value.rule == "TOKEN_EXISTS"

    db(pg_dsn, go)


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    ("scope", "wanted", "covered"),
    [
        ("*", "*", True),
        ("*", "app.bsky.feed.post", True),
        ("app.bsky.feed.post", "app.bsky.feed.post", True),
        ("app.bsky.feed.post", "app.bsky.feed.like", False),
        ("app.bsky.feed.post", "app.bsky.feed.*", False),
        ("science.alt.dataset.*", "science.alt.dataset.entry", True),
        ("science.alt.dataset.*", "science.alt.dataset.lens.v2", True),
        ("science.alt.dataset.*", "science.alt.dataset.*", True),
        ("science.alt.dataset.*", "science.alt.dataset.lens.*", True),
        ("science.alt.dataset.*", "science.alt.*", False),
        ("science.alt.dataset.*", "science.alt.dataset", False),
        ("science.alt.dataset.*", "science.alt.datasetx.foo", False),
        ("science.alt.dataset.*", "science.alt.datasetx.*", False),
        ("science.alt.dataset.*", "*", False),
    ],
)
def test_glob_covers(scope: str, wanted: str, covered: bool) -> None:
    assert nsid_glob_ok(scope) and nsid_glob_ok(wanted)
    assert glob_covers(scope, wanted) is covered


def _matches(glob: str, nsid: str) -> bool:
    if glob == "*":
        return True
    if glob.endswith(".*"):
        return nsid.startswith(glob[:-1])
    return nsid == glob


_segment = st.sampled_from(["app", "bsky", "feed", "science", "alt", "dataset", "x1"])
_nsids = st.lists(_segment, min_size=3, max_size=5).map(".".join)
_globs = st.one_of(
    st.just("*"),
    _nsids,
    st.lists(_segment, min_size=1, max_size=4).map(lambda s: ".".join(s) + ".*"),
)


@settings(max_examples=300, derandomize=True)
@given(scope=_globs, wanted=_globs, nsid=_nsids)
def test_glob_covers_is_sound(scope: str, wanted: str, nsid: str) -> None:
    """If scope covers wanted, every NSID wanted matches is one scope matches."""
    assert nsid_glob_ok(scope) and nsid_glob_ok(wanted)
    assert re.fullmatch(NSID_PATTERN, nsid)
    if glob_covers(scope, wanted) and _matches(wanted, nsid):
        assert _matches(scope, nsid)


def test_scope_denies() -> None:
    ds = TokenScope(collections=("science.alt.dataset.*",))
    assert ds.denies(collection=None, event_type=None, repo=None) is not None
    assert ds.denies(collection="app.bsky.feed.post", event_type=None, repo=None)
    assert (
        ds.denies(collection="science.alt.dataset.entry", event_type=None, repo=None)
        is None
    )
    typed = TokenScope(event_types=("commit", "account"))
    assert typed.denies(collection=None, event_type=None, repo=None)
    assert typed.denies(collection=None, event_type="identity", repo=None)
    assert typed.denies(collection=None, event_type="account", repo=None) is None
    assert typed.denies(collection="a.b.c", event_type=None, repo=None) is None
    assert (
        typed.denies(collection=None, event_type=None, repo=None, action="delete")
        is None
    )
    only_accounts = TokenScope(event_types=("account",))
    assert only_accounts.denies(collection="a.b.c", event_type=None, repo=None)
    repos = TokenScope(repos=("did:plc:abc",))
    assert repos.denies(collection=None, event_type=None, repo="did:plc:abd")
    assert repos.denies(collection=None, event_type=None, repo="did:plc:abc") is None
    assert TokenScope().denies(collection=None, event_type=None, repo=None) is None
    assert TokenScope.from_json(ds.to_json()) == ds


def test_scope_and_included_repository_events() -> None:
    """include= (repository events besides the filters): a collections scope
    allows them (they belong to no collection) but still needs collection=; an
    event_types scope must list each; a repos scope still needs repo=."""
    repo_events = ("account", "identity", "sync")
    ds = TokenScope(collections=("science.alt.dataset.*",))
    coll = "science.alt.dataset.entry"
    assert (
        ds.denies(collection=coll, event_type=None, repo=None, include=repo_events)
        is None
    )
    assert ds.denies(collection=None, event_type=None, repo=None, include=("account",))
    assert ds.denies(
        collection="app.bsky.feed.post",
        event_type=None,
        repo=None,
        include=("account",),
    )
    typed = TokenScope(
        collections=("science.alt.*",), event_types=("commit", "account")
    )
    assert (
        typed.denies(collection=coll, event_type=None, repo=None, include=("account",))
        is None
    )
    reason = typed.denies(
        collection=coll, event_type=None, repo=None, include=("account", "sync")
    )
    assert reason is not None and "include 'sync'" in reason
    kinds = TokenScope(event_types=("commit", "account"))
    assert (
        kinds.denies(
            collection=None, event_type="commit", repo=None, include=("account",)
        )
        is None
    )
    # the filters' own type is still required: include adds, never replaces
    assert kinds.denies(
        collection=None, event_type=None, repo=None, include=("account",)
    )
    repos = TokenScope(repos=("did:plc:abc",))
    assert repos.denies(
        collection=coll, event_type=None, repo=None, include=repo_events
    )
    assert (
        repos.denies(
            collection=coll, event_type=None, repo="did:plc:abc", include=repo_events
        )
        is None
    )


# --------------------------------------------------------------------------- buckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_rate_up_to_burst() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)  # one token in 1/rate s
    assert b.take(0.25) == pytest.approx(0.25)
    assert b.take(0.5) == 0.0
    assert b.take(100.0) == 0.0  # refilled to burst, not beyond
    assert b.take(100.0) == 0.0
    assert b.take(100.0) == 0.0
    assert b.take(100.0) > 0
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1, now=0.0)


def test_rate_limiter_keys_are_independent_and_bounded() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock, max_keys=3)
    assert [rl.check("a", 1.0, 2) for _ in range(3)][:2] == [0.0, 0.0]
    assert rl.check("a", 1.0, 2) > 0
    assert rl.check("b", 1.0, 2) == 0.0  # another token is unaffected
    clock.now += 1.0
    assert rl.check("a", 1.0, 2) == 0.0
    assert rl.check("a", 1.0, 2) > 0
    rl.check("a", 1.0, 20)  # burst raised by an edited row: applies now
    for k in "cdef":
        rl.check(k, 1.0, 1)
    assert len(rl) == 3


@pytest.mark.parametrize(
    ("wait", "header"),
    [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (99.2, "100")],
)
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header
