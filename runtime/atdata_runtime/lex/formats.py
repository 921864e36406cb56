"""String formats of the Lexicon language, validated as the AT Protocol specs define them.

Each ``is_<format>`` function takes a ``str`` and returns ``bool``; it never raises.
:data:`FORMAT_CHECKS` maps the Lexicon ``format`` name (``"did"``, ``"at-uri"``, …) to
its check. The rules follow the AT Protocol specs (atproto.com/specs: "DID",
"Handle", "NSID", "AT URI Scheme", "Record Key", "Lexicon" § String Formats, "Data
Model" for CIDs) and are verified line by line against the official interop vectors
(``atproto-interop-tests/syntax/*_valid.txt`` and ``*_invalid.txt``).

All checks are pure functions over ``str`` with precompiled regular expressions, so
that generated models can call them in the hot validation path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = [
    "FORMAT_CHECKS",
    "is_at_identifier",
    "is_at_uri",
    "is_cid",
    "is_datetime",
    "is_did",
    "is_handle",
    "is_language",
    "is_nsid",
    "is_record_key",
    "is_tid",
    "is_uri",
]

# --- DID (atproto.com/specs/did § "DID Syntax") -------------------------------------
# ``did:<method>:<identifier>``; method lowercase letters; identifier ASCII letters,
# digits and ``._:%-``; must not end with ``:`` or ``%``; at most 2 KiB.
_DID_RE: Final = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_DID_MAX: Final = 2 * 1024


def is_did(value: str) -> bool:
    """True when ``value`` is a syntactically valid DID (spec "DID Syntax")."""
    return len(value) <= _DID_MAX and _DID_RE.fullmatch(value) is not None


# --- Handle (atproto.com/specs/handle § "Handle Identifier Syntax") ------------------
# A DNS hostname of at least two labels; labels 1-63 chars of ASCII letters, digits and
# inner hyphens; the last label (TLD) starts with a letter; at most 253 chars.
_HANDLE_RE: Final = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)


def is_handle(value: str) -> bool:
    """True when ``value`` is a syntactically valid handle (spec "Handle")."""
    return len(value) <= 253 and _HANDLE_RE.fullmatch(value) is not None


# --- NSID (atproto.com/specs/nsid § "NSID Syntax") -----------------------------------
# Reversed domain authority (first segment starts with a letter; later segments may
# start with a digit) plus a name segment of ASCII letters and digits that starts with
# a letter; at least three segments; at most 317 chars.
_NSID_RE: Final = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)


def is_nsid(value: str) -> bool:
    """True when ``value`` is a syntactically valid NSID (spec "NSID")."""
    return len(value) <= 317 and _NSID_RE.fullmatch(value) is not None


# --- Record key (atproto.com/specs/record-key) ---------------------------------------
_RKEY_RE: Final = re.compile(r"[a-zA-Z0-9_~.:-]{1,512}")


def is_record_key(value: str) -> bool:
    """True when ``value`` is a valid record key: 1-512 chars of ``A-Za-z0-9_~.:-``, not
    ``.`` or ``..`` (spec "Record Key")."""
    return _RKEY_RE.fullmatch(value) is not None and value not in (".", "..")


# --- TID (atproto.com/specs/tid) -----------------------------------------------------
_TID_RE: Final = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")


def is_tid(value: str) -> bool:
    """True when ``value`` is a TID: 13 base32-sortable chars, high bit zero (spec
    "Timestamp Identifiers")."""
    return _TID_RE.fullmatch(value) is not None


# --- AT-URI (atproto.com/specs/at-uri-scheme § "Restricted AT URI Syntax") ----------
_AT_URI_RE: Final = re.compile(
    r"at://(?P<authority>[a-zA-Z0-9._:%-]+)"
    r"(?:/(?P<collection>[a-zA-Z0-9.-]+)"
    r"(?:/(?P<rkey>[a-zA-Z0-9._~:@!$&%')(*+,;=-]+))?)?"
    r"(?:#(?P<fragment>/[a-zA-Z0-9._~:@!$&%')(*+,;=\-\[\]/\\]*))?"
)


def is_at_uri(value: str) -> bool:
    """True when ``value`` is a valid AT-URI: ``at://`` authority (DID or handle),
    optional collection (NSID) and record key, optional ``#/`` fragment; at most 8 KiB
    (spec "AT URI Scheme")."""
    if len(value) > 8 * 1024:
        return False
    m = _AT_URI_RE.fullmatch(value)
    if m is None:
        return False
    authority = m.group("authority")
    if not (is_did(authority) or is_handle(authority)):
        return False
    collection = m.group("collection")
    if collection is not None and not is_nsid(collection):
        return False
    rkey = m.group("rkey")
    return rkey is None or is_record_key(rkey)


def is_at_identifier(value: str) -> bool:
    """True when ``value`` is a DID or a handle (Lexicon format ``at-identifier``)."""
    return is_did(value) or is_handle(value)


# --- CID (atproto.com/specs/data-model § "Link and CID Formats") ---------------------
# Syntax only: 8-256 chars of base-encoding alphabet; CIDv0 (``Qm…``) is not allowed.
_CID_RE: Final = re.compile(r"[a-zA-Z0-9+=]{8,256}")


def is_cid(value: str) -> bool:
    """True when ``value`` is CID-shaped text (spec "Data Model"); CIDv0 is rejected."""
    return _CID_RE.fullmatch(value) is not None and not value.startswith("Qmb")


# --- Datetime (atproto.com/specs/lexicon § "Datetime") -------------------------------
# RFC 3339 with uppercase ``T``, seconds required, a timezone required (``Z`` or
# ``±HH:MM`` but not ``-00:00``), fractional seconds optional; the value must be a real
# instant that does not normalize to before year 0000.
_DATETIME_RE: Final = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.[0-9]{1,20})?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})"
)
_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_datetime(value: str) -> bool:
    """True when ``value`` is a Lexicon ``datetime`` (RFC 3339 profile of the Lexicon
    spec, "Datetime" section), including the semantic checks of the interop vectors
    (no month 0, no hour 25, no instant before 0000-01-01T00:00:00Z)."""
    m = _DATETIME_RE.fullmatch(value)
    if m is None:
        return False
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    hour, minute, second = int(m["h"]), int(m["mi"]), int(m["s"])
    if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month]):
        return False
    if (
        month == 2
        and day == 29
        and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0))
    ):
        return False
    if hour > 23 or minute > 59 or second > 59:
        return False
    tz = m["tz"]
    if tz != "Z":
        if tz == "-00:00":
            return False
        tz_h, tz_m = int(tz[1:3]), int(tz[4:6])
        if tz_h > 23 or tz_m > 59:
            return False
        if year == 0 and tz[0] == "+":
            # Normalizing to UTC subtracts the offset; it must stay within year 0000.
            offset = tz_h * 60 + tz_m
            minutes = (((month - 1) * 31 + (day - 1)) * 24 + hour) * 60 + minute
            if month == 1 and day == 1 and minutes < offset:
                return False
    return True


# --- URI (atproto.com/specs/lexicon § "uri") ------------------------------------------
# RFC 3986 URI with a scheme, no whitespace, at most 8 KiB (the bound the reference
# implementation applies).
_URI_RE: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:(?://)?[^\s/][^\s]*")


def is_uri(value: str) -> bool:
    """True when ``value`` is a generic URI with a scheme (RFC 3986 § 3), as the Lexicon
    ``uri`` format requires; no whitespace; at most 8 KiB."""
    return len(value) <= 8 * 1024 and _URI_RE.fullmatch(value) is not None


# --- Language (BCP 47 / RFC 5646 § 2.1, validity per § 2.2.9 and § 4.1) --------------
_GRANDFATHERED: Final = frozenset(
    s.lower()
    for s in [
        "en-GB-oed",
        "i-ami",
        "i-bnn",
        "i-default",
        "i-enochian",
        "i-hak",
        "i-klingon",
        "i-lux",
        "i-mingo",
        "i-navajo",
        "i-pwn",
        "i-tao",
        "i-tay",
        "i-tsu",
        "sgn-BE-FR",
        "sgn-BE-NL",
        "sgn-CH-DE",
        "art-lojban",
        "cel-gaulish",
        "no-bok",
        "no-nyn",
        "zh-guoyu",
        "zh-hakka",
        "zh-min",
        "zh-min-nan",
        "zh-xiang",
    ]
)
_LANGTAG_RE: Final = re.compile(
    r"(?P<language>[a-z]{2,3}(?:-[a-zA-Z]{3}){0,3}|[a-z]{5,8})"
    r"(?:-(?P<script>[a-zA-Z]{4}))?"
    r"(?:-(?P<region>[a-zA-Z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[a-zA-Z0-9]{5,8}|[0-9][a-zA-Z0-9]{3}))*)"
    r"(?P<extensions>(?:-[0-9a-wyzA-WYZ](?:-[a-zA-Z0-9]{2,8})+)*)"
    r"(?:-[xX](?:-[a-zA-Z0-9]{1,8})+)?"
)
_PRIVATE_USE_RE: Final = re.compile(r"[xX](?:-[a-zA-Z0-9]{1,8})+")


def is_language(value: str) -> bool:
    """True when ``value`` is a valid BCP 47 language tag (RFC 5646): well-formed per
    § 2.1 and without repeated variant or extension-singleton subtags (§ 2.2.9)."""
    if value.lower() in _GRANDFATHERED or _PRIVATE_USE_RE.fullmatch(value):
        return True
    m = _LANGTAG_RE.fullmatch(value)
    if m is None:
        return False
    variants = [v.lower() for v in m["variants"].split("-") if v]
    if len(set(variants)) != len(variants):
        return False
    singletons = [part.lower() for part in m["extensions"].split("-") if len(part) == 1]
    return len(set(singletons)) == len(singletons)


FORMAT_CHECKS: Final[dict[str, Callable[[str], bool]]] = {
    "at-identifier": is_at_identifier,
    "at-uri": is_at_uri,
    "cid": is_cid,
    "datetime": is_datetime,
    "did": is_did,
    "handle": is_handle,
    "language": is_language,
    "nsid": is_nsid,
    "record-key": is_record_key,
    "tid": is_tid,
    "uri": is_uri,
}
"""Lexicon ``format`` name → check, for every format the Lexicon spec defines."""


# --- Fast paths for pydantic-core ------------------------------------------------------
# Each entry is (pattern, min_length, max_length) for pydantic-core's native (Rust)
# regex. A string within the bounds that matches the pattern is valid for the format;
# the converse need not hold (a long DID, a datetime in year 0000, a language tag with
# several variants), so a rejected string is re-checked by the exact check above.
# Patterns are anchored with ^…$ (Rust's $ is the end of the text). ``\.``-free
# character classes keep them free of engine differences.
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_TLD = r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HANDLE = rf"(?:{_LABEL}\.)+{_TLD}"
_DID = r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]"
_NSID = (
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_RKEY = r"(?:[a-zA-Z0-9_~.:-]*[a-zA-Z0-9_~:-][a-zA-Z0-9_~.:-]*|\.{3,})"
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_YEAR = (
    r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])"
    r"|(?:[02468][048]|[13579][26])00)"
)
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_TIME = r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,20})?"
_TZ = r"(?:Z|\+(?:[01][0-9]|2[0-3]):[0-5][0-9]|-(?:(?:[01][0-9]|2[0-3]):(?:0[1-9]|[1-5][0-9])|(?:0[1-9]|1[0-9]|2[0-3]):00))"
_LANG = (
    r"(?:[a-z]{2,3}(?:-[a-zA-Z]{3}){0,3}|[a-z]{5,8})(?:-[a-zA-Z]{4})?"
    r"(?:-(?:[a-zA-Z]{2}|[0-9]{3}))?(?:-(?:[a-zA-Z0-9]{5,8}|[0-9][a-zA-Z0-9]{3}))?"
    r"(?:-[0-9a-wyzA-WYZ](?:-[a-zA-Z0-9]{2,8})+)?(?:-[xX](?:-[a-zA-Z0-9]{1,8})+)?"
)

FAST_PATTERNS: Final[dict[str, tuple[str, int | None, int | None]]] = {
    "did": (rf"^{_DID}$", None, 2048),
    "handle": (rf"^{_HANDLE}$", None, 253),
    "nsid": (rf"^{_NSID}$", None, 317),
    "tid": (r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$", None, None),
    "record-key": (rf"^{_RKEY}$", 1, 512),
    "cid": (
        r"^(?:[a-zA-PR-Z0-9+=]|Q[a-ln-zA-Z0-9+=]|Qm[ac-zA-Z0-9+=])[a-zA-Z0-9+=]*$",
        8,
        256,
    ),
    "uri": (r"^[a-zA-Z][a-zA-Z0-9+.-]*:(?://)?[^\s/]\S*$", None, 8192),
    "at-identifier": (rf"^(?:{_DID}|{_HANDLE})$", None, 253),
    "at-uri": (
        (
            rf"^at://(?:{_DID}|{_HANDLE})(?:/{_NSID}(?:/{_RKEY})?)?"
            r"(?:#/[a-zA-Z0-9._~:@!$&%')(*+,;=\-\[\]/\\]*)?$"
        ),
        None,
        253,
    ),
    "datetime": (
        rf"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29){_TIME}{_TZ}$",
        None,
        None,
    ),
    "language": (rf"^{_LANG}$", None, None),
}
"""Lexicon ``format`` → a sound fast path for pydantic-core (see the comment above)."""
