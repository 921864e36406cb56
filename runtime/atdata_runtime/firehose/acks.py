"""Safe acknowledgement under concurrency: the cursor advances only over the
consecutive prefix of finished events.

Events are handed out in stream order, each with the ``seq`` of its frame; the
record operations of one commit share one ``seq`` (``idx`` tells them apart).
Handlers finish in any order. The cursor a consumer may persist is the highest
``seq`` ``S`` such that

* every event handed out with a ``seq`` at most ``S`` has finished, and
* ``S`` is *closed*: all of its events have been handed out (a later ``seq`` was
  added, or :meth:`AckTracker.close` said so).

Resuming the stream with ``?cursor=S`` (``com.atproto.sync.subscribeRepos``;
``since=S`` on the ingestion service) then redelivers every event that had not
finished, and possibly some that had (at-least-once). This is the rule of
``@atproto/sync``'s ``MemoryRunner`` (its ``ConsecutiveList``: a ``seq`` counts
as done when all its events are), with the commit-level group made explicit so
a commit whose first operation finishes before its second is handed out cannot
be acknowledged early.

>>> t = AckTracker()
>>> a, b = t.add(5), t.add(5)     # two operations of commit 5
>>> c = t.add(7)                   # commit 7 (closes 5)
>>> t.done(c), t.cursor            # 7 finished first: 5 is still running
(None, None)
>>> t.done(a), t.done(b)           # 5 finishes; 7 may still get events
(None, 5)
>>> t.close(9)                     # seq 9 had nothing to hand out (filtered)
9

:class:`AckTracker` is pure (no I/O, no clock, no locks): one event loop or one
thread drives it. Errors are :class:`AckError` with a rule ID.
"""

from __future__ import annotations

from collections import deque

__all__ = ["AckError", "AckTracker", "Ticket"]


class AckError(ValueError):
    """A misuse of :class:`AckTracker`. ``rule`` is one of

    * ``ACK_SEQ_ORDER``: a ``seq`` below the last one handed out (or equal to a
      closed one, or at most the starting cursor); streams are ordered by
      ``seq`` (Sync spec, "Firehose": ``seq`` increases);
    * ``ACK_DONE_TWICE``: a ticket finished twice;
    * ``ACK_FOREIGN``: a ticket of another tracker.
    """

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class _Group:
    """The events of one ``seq``: how many are still running, and whether all of
    them have been handed out."""

    __slots__ = ("closed", "outstanding", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.outstanding = 0
        self.closed = False


class Ticket:
    """One handed-out event; give it back to :meth:`AckTracker.done` when its
    handler finished (successfully or not: what counts is that nobody will handle
    it again in this run)."""

    __slots__ = ("_group", "_owner", "finished")

    def __init__(self, owner: AckTracker, group: _Group) -> None:
        self._owner = owner
        self._group = group
        self.finished = False

    @property
    def seq(self) -> int:
        return self._group.seq

    def __repr__(self) -> str:
        state = "finished" if self.finished else "running"
        return f"Ticket(seq={self.seq}, {state})"


class AckTracker:
    """The consecutive-prefix cursor of a stream whose events finish out of order.

    ``cursor`` starts at the given starting cursor (``None``: nothing
    acknowledged yet) and only grows. :meth:`add` hands out one event of ``seq``
    (``seq`` never below the previous one; a larger ``seq`` closes the previous
    one), :meth:`close` declares a ``seq`` complete (also one with no event,
    e.g. a frame whose operations were all filtered out), :meth:`done` finishes
    a ticket. Both :meth:`close` and :meth:`done` return the new cursor when it
    advanced, else ``None``. Memory is one small object per ``seq`` not yet
    acknowledged.
    """

    __slots__ = ("_closed", "_cursor", "_groups", "_last", "_outstanding")

    def __init__(self, cursor: int | None = None) -> None:
        self._cursor = cursor
        self._last = cursor  # highest seq added or closed
        self._closed = cursor  # highest seq closed
        self._groups: deque[_Group] = deque()
        self._outstanding = 0

    @property
    def cursor(self) -> int | None:
        """The highest ``seq`` safe to persist (see the module doc)."""
        return self._cursor

    @property
    def last_seq(self) -> int | None:
        """The highest ``seq`` handed out or closed: where a reconnect resumes
        reading (events after it are new; events up to it are duplicates)."""
        return self._last

    @property
    def closed_seq(self) -> int | None:
        """The highest closed ``seq`` (all of its events handed out; the starting
        cursor at first): where a reconnect resumes reading without losing the
        rest of a ``seq`` whose events were only partly handed out."""
        return self._closed

    @property
    def pending(self) -> int:
        """Events handed out and not finished."""
        return self._outstanding

    def accepts(self, seq: int) -> bool:
        """Whether :meth:`add` takes an event of ``seq``: a ``seq`` above the last
        one, or the last one while it is open. Anything else is a duplicate of
        what was handed out (or acknowledged) already."""
        tail = self._groups[-1] if self._groups else None
        if tail is not None and tail.seq == seq and not tail.closed:
            return True
        return self._last is None or seq > self._last

    def _tail(self, seq: int) -> _Group:
        """The group of ``seq``, creating it (and closing the previous one) when
        ``seq`` is new; ``ACK_SEQ_ORDER`` when ``seq`` lies in the past."""
        tail = self._groups[-1] if self._groups else None
        if tail is not None and tail.seq == seq and not tail.closed:
            return tail
        if self._last is not None and seq <= self._last:
            raise AckError(
                "ACK_SEQ_ORDER",
                f"seq {seq} after seq {self._last} (streams are ordered by seq; "
                "a closed seq takes no more events)",
            )
        group = _Group(seq)
        self._groups.append(group)
        self._last = seq
        if tail is not None and not tail.closed:
            tail.closed = True
            self._closed = tail.seq
            self._advance()  # the previous seq may have finished already
        return group

    def add(self, seq: int) -> Ticket:
        """Hand out one event of ``seq``. A new ``seq`` closes the previous one,
        which may advance :attr:`cursor` (read it after). Raises :class:`AckError`
        (``ACK_SEQ_ORDER``) for a ``seq`` below the last one, equal to a closed
        one, or at most the starting cursor."""
        group = self._tail(seq)
        group.outstanding += 1
        self._outstanding += 1
        return Ticket(self, group)

    def close(self, seq: int) -> int | None:
        """All events of ``seq`` (possibly none) have been handed out. Closing the
        open ``seq`` again, or any ``seq`` at most the last one, is a no-op; a
        new ``seq`` makes an empty, closed group. Returns the new cursor when it
        advanced."""
        tail = self._groups[-1] if self._groups else None
        if tail is not None and tail.seq == seq:
            if tail.closed:
                return None
            tail.closed = True
        elif self._last is None or seq > self._last:
            self._tail(seq).closed = True
        else:
            return None
        self._closed = seq
        return self._advance()

    def done(self, ticket: Ticket) -> int | None:
        """``ticket``'s event finished. Returns the new cursor when it advanced.
        Raises :class:`AckError` (``ACK_DONE_TWICE``, ``ACK_FOREIGN``)."""
        if ticket._owner is not self:
            raise AckError("ACK_FOREIGN", f"{ticket!r} belongs to another tracker")
        if ticket.finished:
            raise AckError("ACK_DONE_TWICE", f"{ticket!r} finished twice")
        ticket.finished = True
        ticket._group.outstanding -= 1
        self._outstanding -= 1
        return self._advance()

    def _advance(self) -> int | None:
        moved = False
        groups = self._groups
        while groups and groups[0].closed and groups[0].outstanding == 0:
            self._cursor = groups.popleft().seq
            moved = True
        return self._cursor if moved else None

    def __repr__(self) -> str:
        return (
            f"AckTracker(cursor={self._cursor}, last_seq={self._last}, "
            f"closed_seq={self._closed}, "
            f"pending={self._outstanding}, seqs={len(self._groups)})"
        )
