"""Typo tolerance for searchDatasets: the words of indexed entry names, and the
nearest of them to a word that is not one.

PostgreSQL full text matches lexemes exactly, so "cel crops" misses "cell crops".
Matching every name by trigram similarity (pg_trgm ``%``) instead costs a scan of
every name that shares a common trigram with the text, which for a typo of a common
word is most of the table. So the search expands the text instead, as the pg_trgm
documentation suggests for spelling correction: each word of the text that no name
contains is OR-ed (``ts_rewrite``) with the name words nearest to it by trigram
similarity, and full text does the rest with its index. pg_trgm's
``word_similarity`` then ranks the (bounded) candidates by name.

:class:`Vocabulary` holds the distinct words of ``appview_entries.name``
(PostgreSQL's ``simple`` text-search configuration: lower case, unstemmed; at
least 3 characters, starting with a letter; the :data:`MAX_WORDS` most frequent)
with a trigram index. Trigrams are pg_trgm's (each word padded with two spaces
before and one after; similarity = shared trigrams / all trigrams of both), so the
nearest words are the ones ``similarity()`` would pick. One vocabulary per process,
reloaded when the index moves (:func:`current`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Final

import numpy as np

__all__ = [
    "CHECK_SECONDS",
    "MAX_WORDS",
    "RELOAD_SECONDS",
    "SYNC_LOAD_ROWS",
    "THRESHOLD",
    "Vocabulary",
    "current",
    "database_key",
    "query_words",
    "reset",
]

log = logging.getLogger(__name__)

MAX_WORDS: Final = 200_000
"""Most words kept (the most frequent)."""

THRESHOLD: Final = 0.3
"""Least trigram similarity of a correction (pg_trgm's ``similarity_threshold``
default, the one of its ``%`` operator)."""

MAX_CORRECTIONS: Final = 3
"""Corrections per unknown word, most similar (then most frequent) first."""

CHECK_SECONDS: float = 5.0
"""How often (at most) a process checks whether the index moved (seconds)."""

RELOAD_SECONDS: float = 60.0
"""A large vocabulary (see :data:`SYNC_LOAD_ROWS`) is rebuilt at most this often
(seconds): building it reads every name (``ts_stat``)."""

SYNC_LOAD_ROWS: Final = 20_000
"""Below this many entries a stale vocabulary is reloaded before answering (it
takes milliseconds); above, in the background, the old one serving meanwhile."""

EDIT_CANDIDATES: Final = 64
"""Words (the most trigram-similar) checked by edit distance for one unknown word."""


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance of ``a`` and ``b`` (insertions,
    deletions, substitutions, adjacent transpositions), or ``limit + 1`` when it is
    more than ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


_WORD_RE: Final = re.compile(r"[^\W_]+")
_LOAD_SQL: Final = (
    "SELECT word, ndoc FROM ts_stat("
    "'SELECT to_tsvector(''simple''::regconfig, name) FROM appview_entries') "
    "WHERE word ~ '^[[:alpha:]][[:alnum:]]{2,79}$' ORDER BY ndoc DESC, word LIMIT $1"
)
_GENERATION_SQL: Final = (
    "SELECT c.seq, c.folded, c.dead_letters, "
    "(SELECT max(indexed_at) FROM appview_entries) AS newest, "
    "(SELECT reltuples FROM pg_class WHERE oid = 'appview_entries'::regclass) AS rows "
    "FROM appview_cursor c"
)


def database_key(db: Any) -> tuple[Any, ...]:
    """Which database ``db`` (an asyncpg connection, pooled or not, or a pool)
    talks to: server address and database name (a pool: its identity), so that a
    per-process cache of one database never answers for another."""
    addr = getattr(db, "_addr", None)
    if addr is None:
        return ("pool", id(db))
    return (str(addr), getattr(getattr(db, "_params", None), "database", None))


def trigrams(word: str) -> set[str]:
    """pg_trgm's trigrams of one word (lower-cased, padded ``"  w "``)."""
    padded = f"  {word.lower()} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def query_words(text: str) -> list[str]:
    """The words of a search text that may be corrected: lower case, at least 3
    characters, not all digits, each once, in order (at most 16)."""
    out: list[str] = []
    for m in _WORD_RE.finditer(text.lower()):
        word = m.group(0)
        if len(word) >= 3 and not word.isdigit() and word not in out:
            out.append(word)
        if len(out) >= 16:
            break
    return out


class Vocabulary:
    """Words with document counts and a trigram index (see the module doc)."""

    def __init__(self, words: Iterable[tuple[str, int]], generation: Any = None):
        self.generation = generation
        self.loaded_at = time.monotonic()
        self.words: list[str] = []
        self.known: dict[str, int] = {}
        counts: list[int] = []
        sizes: list[int] = []
        postings: dict[str, list[int]] = {}
        for word, ndoc in words:
            if word in self.known:
                continue
            i = len(self.words)
            self.known[word] = i
            self.words.append(word)
            counts.append(ndoc)
            grams = trigrams(word)
            sizes.append(len(grams))
            for g in grams:
                postings.setdefault(g, []).append(i)
        self.ndoc = np.asarray(counts, dtype=np.int64)
        self.size = np.asarray(sizes, dtype=np.int32)
        self.index = {g: np.asarray(ids, dtype=np.int32) for g, ids in postings.items()}
        self.corrections = functools.lru_cache(maxsize=4096)(self._corrections)

    def __len__(self) -> int:
        return len(self.words)

    def _corrections(self, word: str) -> tuple[str, ...]:
        # The MAX_CORRECTIONS nearest words: trigram similarity >= THRESHOLD, or
        # (a transposition or a slip that trigrams rate low) among the
        # EDIT_CANDIDATES most similar, within EDIT_DISTANCE edits (optimal
        # string alignment); nearest by edits, then similarity, then document
        # count. () when none.
        grams = trigrams(word)
        lists = [self.index[g] for g in grams if g in self.index]
        if not lists:
            return ()
        ids = np.concatenate(lists)
        shared = np.bincount(ids, minlength=len(self.words))
        cand = np.nonzero(shared >= 2)[0]
        if not len(cand):
            return ()
        common = shared[cand]
        sim = common / (len(grams) + self.size[cand] - common)
        top = np.lexsort((-self.ndoc[cand], -sim))[:EDIT_CANDIDATES]
        limit = 1 if len(word) <= 5 else 2
        scored = []
        for i in top:
            other = self.words[int(cand[i])]
            edits = osa_distance(word, other, limit)
            if sim[i] >= THRESHOLD or edits <= limit:
                scored.append((edits, -float(sim[i]), -int(self.ndoc[cand[i]]), other))
        scored.sort()
        return tuple(w for *_, w in scored[:MAX_CORRECTIONS])

    def expansions(self, text: str) -> list[tuple[str, tuple[str, ...]]]:
        """For each word of ``text`` that no name contains, its corrections:
        ``[(word, (correction, ...)), ...]`` (words without any left out)."""
        out = []
        for word in query_words(text):
            if word in self.known:
                continue
            fixes = self.corrections(word)
            if fixes:
                out.append((word, fixes))
        return out


_current: Vocabulary | None = None
_checked_at = 0.0
_loading: asyncio.Task[None] | None = None


def reset() -> None:
    """Forget the process's vocabulary (tests; after a restore)."""
    global _current, _checked_at, _loading
    _current, _checked_at, _loading = None, 0.0, None


async def _load(db: Any, generation: Any, *, thread: bool = False) -> Vocabulary:
    rows = await db.fetch(_LOAD_SQL, MAX_WORDS)
    words = [(r["word"], r["ndoc"]) for r in rows]
    if thread:  # a large vocabulary is built off the event loop
        return await asyncio.to_thread(Vocabulary, words, generation)
    return Vocabulary(words, generation)


async def _load_in_background(pool: Any, generation: Any) -> None:
    global _current
    try:
        async with pool.acquire() as conn:
            _current = await _load(conn, generation, thread=True)
    except Exception:  # the old vocabulary keeps serving; retried at next check
        log.warning("search vocabulary reload failed", exc_info=True)


async def current(db: Any, pool: Any = None) -> Vocabulary:
    """The process's vocabulary, (re)loaded through ``db`` when missing, and when
    the index moved (``appview_cursor`` counters or the newest ``indexed_at``
    changed; checked at most every :data:`CHECK_SECONDS`): before answering when
    the table is small (< :data:`SYNC_LOAD_ROWS` rows) or no ``pool`` is given;
    else at most every :data:`RELOAD_SECONDS`, in a background task on a
    connection of ``pool``, the old vocabulary answering meanwhile."""
    global _current, _checked_at, _loading
    now = time.monotonic()
    vocab = _current
    if vocab is not None and now - _checked_at < CHECK_SECONDS:
        return vocab
    _checked_at = now
    row = await db.fetchrow(_GENERATION_SQL)
    generation = (
        database_key(db),
        row["seq"],
        row["folded"],
        row["dead_letters"],
        row["newest"],
    )
    if vocab is not None and vocab.generation == generation:
        return vocab
    small = (row["rows"] or 0) < SYNC_LOAD_ROWS
    if vocab is None or pool is None or small or vocab.generation[0] != generation[0]:
        vocab = _current = await _load(db, generation)
        return vocab
    if now - vocab.loaded_at >= RELOAD_SECONDS and (
        _loading is None or _loading.done()
    ):
        _loading = asyncio.create_task(_load_in_background(pool, generation))
    return vocab
