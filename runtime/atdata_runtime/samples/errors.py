"""The errors of sample decoding: :class:`SampleFormatError` and its array subclass
:class:`ArrayFormatError`.

Both say where (the shard, its member, the field path such as ``tags[3]``) and why,
and carry a stable rule ID (``rule``) so that callers can tell a missing field from
a hostile payload without parsing messages. They live in their own module because
the array layer (:mod:`.ndarray`) sits below the codec (:mod:`.codec`) and raises
them too.
"""

from __future__ import annotations

from typing import Self

__all__ = ["ArrayFormatError", "SampleFormatError"]


class SampleFormatError(ValueError):
    """A payload that does not fit its sample class: a missing required field, an
    unknown key under ``unknown="error"``, a value of the wrong kind (a dict where a
    ``str`` is declared), an ext type, a payload over a decoding limit, or an array
    whose dtype or shape breaks the schema.

    Attributes: ``reason`` (why), ``field`` (the field path: wire name, then
    ``[i]`` per list level), ``member`` (the shard member, e.g. ``k3.msgpack``),
    ``shard`` (the shard's URL or path, when known) and ``rule`` (stable ID). The
    message is ``"shard 'u', member 'm', field 'f': reason [RULE]"``."""

    rule = "SAMPLE_FORMAT"

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        member: str | None = None,
        shard: str | None = None,
        rule: str | None = None,
    ) -> None:
        self.reason, self.field, self.member, self.shard = reason, field, member, shard
        if rule is not None:
            self.rule = rule
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.shard:
            where.append(f"shard {self.shard!r}")
        if self.member:
            where.append(f"member {self.member!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        return f"{prefix}{self.reason} [{self.rule}]"

    def located(
        self,
        *,
        field: str | None = None,
        member: str | None = None,
        shard: str | None = None,
    ) -> Self:
        """A copy of the same class and rule with the location filled in (values
        already set are kept)."""
        return type(self)(
            self.reason,
            field=self.field or field,
            member=self.member or member,
            shard=self.shard or shard,
            rule=self.rule,
        )


class ArrayFormatError(SampleFormatError):
    """Array bytes (compact layout or ``.npy``) that cannot be decoded: says why,
    and where when known (the field and shard member are filled in by the sample
    codec). A :class:`SampleFormatError`, so catching that catches both."""

    rule = "ARRAY_FORMAT"
