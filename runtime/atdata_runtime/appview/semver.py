"""Semantic versions (semver.org 2.0.0) and version ranges in npm's syntax, with
Cargo's comma as a second way to write "and".

:class:`Version` parses ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`` strictly (no
leading zeros, no ``v``) and orders by semver § 11 precedence (build metadata
ignored). :class:`VersionRange` parses a range as ``node-semver`` does
(npm docs, "semver: Ranges"):

- ``1.2.3``, ``=1.2.3``: exactly that version (npm; Cargo would read a bare
  ``1.2.3`` as ``^1.2.3``);
- comparators ``<``, ``<=``, ``>``, ``>=`` with full or partial versions
  (``>1.2`` is ``>=1.3.0``, ``<=1`` is ``<2.0.0-0``);
- X-ranges ``*``, ``x``, ``1``, ``1.x``, ``1.2.*``;
- ``~1.2.3`` (``>=1.2.3 <1.3.0-0``), ``~1.2``, ``~1`` (and Cargo's ``~>``);
- ``^1.2.3`` (``>=1.2.3 <2.0.0-0``), ``^0.2.3`` (``<0.3.0-0``), ``^0.0.3``
  (``<0.0.4-0``), ``^1.2``, ``^1``, ``^0.x``;
- hyphen ranges ``1.2 - 2.3.4`` (``>=1.2.0 <=2.3.4``);
- comparators joined by spaces or commas (Cargo: ``>=1.0, <2``) must all hold;
  sets joined by ``||`` are alternatives (one that is just ``*`` makes the
  whole range ``*``, as in node-semver).

Prereleases follow npm: ``1.3.0-beta`` satisfies a comparator set only when it
satisfies every comparator *and* some comparator of the set names a prerelease of
the same ``MAJOR.MINOR.PATCH`` (so ``^1`` never picks ``2.0.0-rc.1`` nor
``1.5.0-beta``, while ``>=1.5.0-beta <2`` picks ``1.5.0-beta.2``).

Pure Python; the property tests check it against ``semantic_version.NpmSpec``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Version", "VersionRange", "latest"]

T = TypeVar("T")

MAX_RANGE_LENGTH = 256
"""Characters of a range text accepted."""

MAX_NUMBER_DIGITS = 16
"""Digits of one numeric version part (npm caps them at MAX_SAFE_INTEGER)."""

_NUM = r"0|[1-9][0-9]{0,15}"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_PRE = rf"{_PRE_ID}(?:\.{_PRE_ID})*"
_BUILD = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_VERSION = re.compile(rf"({_NUM})\.({_NUM})\.({_NUM})(?:-({_PRE}))?(?:\+({_BUILD}))?")
_XR = rf"[xX*]|{_NUM}"
_PARTIAL = rf"v?({_XR})(?:\.({_XR})(?:\.({_XR})(?:-({_PRE}))?(?:\+({_BUILD}))?)?)?"
_PARTIAL_RE = re.compile(_PARTIAL)
_COMPARATOR = re.compile(rf"(<=|>=|<|>|=|~>|~|\^)?{_PARTIAL}")
_HYPHEN = re.compile(rf"({_PARTIAL})\s+-\s+({_PARTIAL})")


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semantic version: ``major``, ``minor``, ``patch``, ``prerelease``
    identifiers (ints for numeric ones) and ``build`` identifiers. Compared by
    precedence (semver § 11): build metadata is ignored, so ``1.0.0+a == 1.0.0+b``."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse a semver 2.0.0 version; ``ValueError`` naming it otherwise."""
        match = _VERSION.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"{str(text)[:100]!r} is not a semantic version (MAJOR.MINOR.PATCH, "
                "semver.org 2.0.0)"
            )
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor), int(patch), _pre(pre), _build(build))

    @classmethod
    def try_parse(cls, text: object) -> Version | None:
        """:meth:`parse`, or ``None`` for anything that is not a version."""
        if not isinstance(text, str):
            return None
        try:
            return cls.parse(text)
        except ValueError:
            return None

    @property
    def tuple3(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def key(self) -> tuple[object, ...]:
        """Sort key of semver precedence: a release sorts after its prereleases;
        numeric identifiers sort numerically and before alphanumeric ones; a
        shorter list of identifiers sorts first when the longer one starts with
        it."""
        pre = tuple(
            (0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.key() == other.key()

    def __lt__(self, other: Version) -> bool:
        return self.key() < other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


def _pre(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def _build(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


_ZERO_PRE: tuple[int | str, ...] = (0,)


@dataclass(frozen=True)
class _Comparator:
    op: str  # "<", "<=", ">", ">=", "="
    version: Version
    any: bool = False  # written as *, x or nothing (node-semver's ANY)

    def test(self, v: Version) -> bool:
        a, b = v.key(), self.version.key()
        if self.op == "=":
            return a == b
        if self.op == "<":
            return a < b
        if self.op == "<=":
            return a <= b
        if self.op == ">":
            return a > b
        return a >= b

    def __str__(self) -> str:
        return f"{'' if self.op == '=' else self.op}{self.version}"


_ANY = (_Comparator(">=", Version(0, 0, 0), any=True),)
_NOTHING = (_Comparator("<", Version(0, 0, 0, _ZERO_PRE)),)


def _is_x(part: str | None) -> bool:
    return part is None or part in ("x", "X", "*")


def _v(major: int, minor: int, patch: int, pre: tuple[int | str, ...] = ()) -> Version:
    return Version(major, minor, patch, pre)


def _parts(
    groups: tuple[str | None, ...],
) -> tuple[int | None, int | None, int | None, tuple[int | str, ...]]:
    """``(M, m, p, pre)`` of a partial version; ``None`` for a wildcard (and
    everything after a wildcard)."""
    m_, n_, p_, pre = groups[:4]
    parts = [m_, n_, p_]
    wild = [_is_x(x) for x in parts]
    for i in range(2):
        if wild[i] and parts[i + 1] is not None and not wild[i + 1]:
            raise ValueError("a number follows a wildcard (write 1.x, not x.1)")
    major = None if _is_x(m_) else int(str(m_))
    minor = None if major is None or _is_x(n_) else int(str(n_))
    patch = None if minor is None or _is_x(p_) else int(str(p_))
    return major, minor, patch, _pre(pre) if patch is not None else ()


def _tilde(
    M: int | None, m: int | None, p: int | None, pre: tuple[int | str, ...]
) -> tuple[_Comparator, ...]:
    if M is None:
        return _ANY
    if m is None:
        return (
            _Comparator(">=", _v(M, 0, 0)),
            _Comparator("<", _v(M + 1, 0, 0, _ZERO_PRE)),
        )
    upper = _Comparator("<", _v(M, m + 1, 0, _ZERO_PRE))
    if p is None:
        return (_Comparator(">=", _v(M, m, 0)), upper)
    return (_Comparator(">=", _v(M, m, p, pre)), upper)


def _caret(
    M: int | None, m: int | None, p: int | None, pre: tuple[int | str, ...]
) -> tuple[_Comparator, ...]:
    if M is None:
        return _ANY
    if m is None:
        return (
            _Comparator(">=", _v(M, 0, 0)),
            _Comparator("<", _v(M + 1, 0, 0, _ZERO_PRE)),
        )
    if p is None:
        upper = _v(M, m + 1, 0, _ZERO_PRE) if M == 0 else _v(M + 1, 0, 0, _ZERO_PRE)
        return (_Comparator(">=", _v(M, m, 0)), _Comparator("<", upper))
    if M == 0:
        upper = _v(0, 0, p + 1, _ZERO_PRE) if m == 0 else _v(0, m + 1, 0, _ZERO_PRE)
    else:
        upper = _v(M + 1, 0, 0, _ZERO_PRE)
    return (_Comparator(">=", _v(M, m, p, pre)), _Comparator("<", upper))


def _xrange(
    op: str, M: int | None, m: int | None, p: int | None, pre: tuple[int | str, ...]
) -> tuple[_Comparator, ...]:
    any_x = p is None
    if op == "=" and any_x:
        op = ""
    if M is None:
        return _NOTHING if op in ("<", ">") else _ANY
    if op and any_x:
        minor = 0 if m is None else m
        major = M
        if op == ">":
            op = ">="
            if m is None:
                major, minor = M + 1, 0
            else:
                minor = m + 1
        elif op == "<=":
            op = "<"
            if m is None:
                major, minor = M + 1, 0
            else:
                minor = m + 1
        version = _v(major, minor, 0, _ZERO_PRE if op == "<" else ())
        return (_Comparator(op, version),)
    if m is None:
        return (
            _Comparator(">=", _v(M, 0, 0)),
            _Comparator("<", _v(M + 1, 0, 0, _ZERO_PRE)),
        )
    if p is None:
        return (
            _Comparator(">=", _v(M, m, 0)),
            _Comparator("<", _v(M, m + 1, 0, _ZERO_PRE)),
        )
    return (_Comparator(op or "=", _v(M, m, p, pre)),)


def _hyphen(
    low: tuple[str | None, ...], high: tuple[str | None, ...]
) -> tuple[_Comparator, ...]:
    out: list[_Comparator] = []
    M, m, p, pre = _parts(low)
    if M is not None:
        out.append(
            _Comparator(">=", _v(M, m or 0, p or 0, pre if p is not None else ()))
        )
    M, m, p, pre = _parts(high)
    if M is not None:
        if m is None:
            out.append(_Comparator("<", _v(M + 1, 0, 0, _ZERO_PRE)))
        elif p is None:
            out.append(_Comparator("<", _v(M, m + 1, 0, _ZERO_PRE)))
        else:
            out.append(_Comparator("<=", _v(M, m, p, pre)))
    return tuple(out) or _ANY


def _comparator_set(text: str, whole: str) -> tuple[_Comparator, ...]:
    text = text.replace(",", " ").strip()
    if not text:
        return _ANY
    hyphen = _HYPHEN.fullmatch(text)
    if hyphen is not None:
        groups = hyphen.groups()
        try:
            return _hyphen(groups[1:6], groups[7:12])
        except ValueError as exc:
            raise ValueError(f"{whole[:100]!r} is not a version range: {exc}") from None
    # ">= 1.2" is ">=1.2" (node-semver allows space after an operator)
    text = re.sub(r"(<=|>=|~>|<|>|=|~|\^)\s+", r"\1", text)
    out: list[_Comparator] = []
    for token in text.split():
        match = _COMPARATOR.fullmatch(token)
        if match is None:
            raise ValueError(
                f"{whole[:100]!r} is not a version range: {token[:40]!r} is not a "
                "comparator (npm syntax: ^1.2, ~1.2.3, >=1.0 <2, 1.x, *, 1.0 - 2.0)"
            )
        op = match.group(1) or "="
        try:
            M, m, p, pre = _parts(match.groups()[1:6])
        except ValueError as exc:
            raise ValueError(
                f"{whole[:100]!r} is not a version range: {token[:40]!r}: {exc}"
            ) from None
        if op in ("~", "~>"):
            out.extend(_tilde(M, m, p, pre))
        elif op == "^":
            out.extend(_caret(M, m, p, pre))
        else:
            out.extend(_xrange(op, M, m, p, pre))
    kept = tuple(c for c in out if not c.any)  # node-semver drops * beside others
    return kept or _ANY


@dataclass(frozen=True)
class VersionRange:
    """A parsed version range (module docstring): ``text`` as written and
    ``sets``, alternatives of comparators that must all hold."""

    text: str
    sets: tuple[tuple[_Comparator, ...], ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse ``text``; ``ValueError`` saying which part does not parse."""
        if not isinstance(text, str):
            raise TypeError("a version range is text")
        if len(text) > MAX_RANGE_LENGTH:
            raise ValueError(
                f"version range is longer than {MAX_RANGE_LENGTH} characters"
            )
        if not text.isascii() or any(not ch.isprintable() for ch in text):
            raise ValueError(
                f"{text[:100]!r} is not a version range (ASCII, printable)"
            )
        sets = tuple(_comparator_set(part, text) for part in text.split("||"))
        for comparators in sets:
            # node-semver: an alternative that is just * makes the range *
            # ("1.0.0-beta || *" does not match 1.0.0-beta)
            if len(sets) > 1 and len(comparators) == 1 and comparators[0].any:
                sets = (comparators,)
                break
        return cls(text.strip(), sets)

    @property
    def exact(self) -> Version | None:
        """The version when the range names exactly one (``1.2.3``, ``=1.2.3``),
        else ``None``."""
        if len(self.sets) == 1 and len(self.sets[0]) == 1 and self.sets[0][0].op == "=":
            return self.sets[0][0].version
        return None

    def matches(self, version: Version | str) -> bool:
        """Whether ``version`` satisfies the range (npm rules, prereleases
        included as the module docstring says). A string that is not a semantic
        version never matches."""
        v = version if isinstance(version, Version) else Version.try_parse(version)
        if v is None:
            return False
        for comparators in self.sets:
            if not all(c.test(v) for c in comparators):
                continue
            if not v.prerelease:
                return True
            if any(
                c.version.prerelease and c.version.tuple3 == v.tuple3
                for c in comparators
            ):
                return True
        return False

    def best(self, items: Iterable[T], version: Callable[[T], object]) -> T | None:
        """The item with the highest version (``version(item)``, a string or
        :class:`Version`) satisfying the range; ``None`` when none does."""
        found: tuple[Version, T] | None = None
        for item in items:
            raw = version(item)
            v = raw if isinstance(raw, Version) else Version.try_parse(raw)
            if v is not None and self.matches(v) and (found is None or v > found[0]):
                found = (v, item)
        return found[1] if found else None

    def __str__(self) -> str:
        return self.text

    def normalized(self) -> str:
        """The comparators the range stands for (``^1.2`` → ``>=1.2.0 <2.0.0-0``)."""
        return " || ".join(" ".join(str(c) for c in s) for s in self.sets)


def latest(items: Iterable[T], version: Callable[[T], object]) -> T | None:
    """The item with the highest release version (no prerelease); when there is
    none, the highest prerelease; ``None`` when no item has a semantic version."""
    best_release: tuple[Version, T] | None = None
    best_any: tuple[Version, T] | None = None
    for item in items:
        raw = version(item)
        v = raw if isinstance(raw, Version) else Version.try_parse(raw)
        if v is None:
            continue
        if best_any is None or v > best_any[0]:
            best_any = (v, item)
        if not v.prerelease and (best_release is None or v > best_release[0]):
            best_release = (v, item)
    chosen = best_release or best_any
    return chosen[1] if chosen else None
