"""AckTracker: the cursor advances only over the consecutive prefix of finished
events (``@atproto/sync``'s runner rule), under random completion orders.

The oracle is the definition, computed from scratch at every step: the highest
closed ``seq`` such that every event handed out with a ``seq`` at most it has
finished."""

from __future__ import annotations

import pytest
from atdata_runtime.firehose.acks import AckError, AckTracker, Ticket
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)


def oracle(
    start: int | None,
    seqs: list[int],
    closed: set[int],
    running: dict[int, int],
) -> int | None:
    """The definition of the cursor: walk the seqs in order while each is closed
    and has nothing running."""
    cursor = start
    for seq in seqs:
        if seq not in closed or running.get(seq, 0):
            break
        cursor = seq
    return cursor


class TrackerMachine(RuleBasedStateMachine):
    """Random interleavings of hand-out (same seq or a later one), explicit
    closes (also of seqs with no event) and completions in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = AckTracker()
        self.start: int | None = None
        self.seqs: list[int] = []  # every seq added or closed, in order
        self.closed: set[int] = set()
        self.running: dict[int, int] = {}
        self.tickets: list[Ticket] = []
        self.cursors: list[int | None] = []

    @initialize(start=st.one_of(st.none(), st.integers(0, 1000)))
    def begin(self, start: int | None) -> None:
        self.tracker = AckTracker(start)
        self.start = start

    def _last(self) -> int | None:
        return self.seqs[-1] if self.seqs else self.start

    def _new_seq(self, gap: int) -> int:
        last = self._last()
        return (0 if last is None else last) + gap

    @rule(gap=st.integers(1, 3))
    def add_new_seq(self, gap: int) -> None:
        seq = self._new_seq(gap)
        if self.seqs:
            self.closed.add(self.seqs[-1])
        self.seqs.append(seq)
        self.tickets.append(self.tracker.add(seq))
        self.running[seq] = self.running.get(seq, 0) + 1

    @precondition(lambda self: bool(self.seqs) and self.seqs[-1] not in self.closed)
    @rule()
    def add_same_seq(self) -> None:
        seq = self.seqs[-1]
        self.tickets.append(self.tracker.add(seq))
        self.running[seq] += 1

    @precondition(lambda self: bool(self.seqs))
    @rule()
    def close_open_seq(self) -> None:
        self.closed.add(self.seqs[-1])
        self.tracker.close(self.seqs[-1])

    @rule(gap=st.integers(1, 3))
    def close_empty_seq(self, gap: int) -> None:
        seq = self._new_seq(gap)
        if self.seqs:
            self.closed.add(self.seqs[-1])
        self.seqs.append(seq)
        self.closed.add(seq)
        self.tracker.close(seq)

    @rule(back=st.integers(0, 5))
    def close_past_seq_is_noop(self, back: int) -> None:
        last = self._last()
        if last is None or (self.seqs and self.seqs[-1] not in self.closed):
            return  # closing the open seq is not a no-op
        before = self.tracker.cursor
        assert self.tracker.close(last - back) is None
        assert self.tracker.cursor == before

    @precondition(lambda self: any(not t.finished for t in self.tickets))
    @rule(pick=st.integers(0, 10_000))
    def finish_one(self, pick: int) -> None:
        open_tickets = [t for t in self.tickets if not t.finished]
        ticket = open_tickets[pick % len(open_tickets)]
        before = self.tracker.cursor
        moved = self.tracker.done(ticket)
        self.running[ticket.seq] -= 1
        if moved is None:
            assert self.tracker.cursor == before
        else:
            assert moved == self.tracker.cursor

    @rule()
    def finish_all_and_close(self) -> None:
        for ticket in self.tickets:
            if not ticket.finished:
                self.tracker.done(ticket)
                self.running[ticket.seq] -= 1
        if self.seqs:
            self.closed.add(self.seqs[-1])
            self.tracker.close(self.seqs[-1])
        # Everything finished and closed: the cursor reaches the max.
        assert self.tracker.cursor == self._last()
        assert self.tracker.pending == 0

    @invariant()
    def matches_definition(self) -> None:
        expected = oracle(self.start, self.seqs, self.closed, self.running)
        assert self.tracker.cursor == expected

    @invariant()
    def never_passes_an_unfinished_event(self) -> None:
        cursor = self.tracker.cursor
        if cursor is None:
            return
        for ticket in self.tickets:
            if not ticket.finished:
                assert ticket.seq > cursor

    @invariant()
    def monotonic(self) -> None:
        cursor = self.tracker.cursor
        if self.cursors and self.cursors[-1] is not None:
            assert cursor is not None and cursor >= self.cursors[-1]
        self.cursors.append(cursor)

    @invariant()
    def counts(self) -> None:
        assert self.tracker.pending == sum(self.running.values())
        assert self.tracker.last_seq == self._last()
        closed = [s for s in self.seqs if s in self.closed]
        assert self.tracker.closed_seq == (max(closed) if closed else self.start)

    @invariant()
    def accepts_what_add_takes(self) -> None:
        last = self._last()
        if last is None:
            assert self.tracker.accepts(0)
            return
        is_open = bool(self.seqs) and self.seqs[-1] not in self.closed
        assert self.tracker.accepts(last) == is_open
        assert self.tracker.accepts(last + 1)
        assert not self.tracker.accepts(last - 1)


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(max_examples=300, stateful_step_count=60)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int]]:
    """Frames ``(seq, events)`` (increasing seqs, 0..4 events each, as commits
    with several operations or frames filtered to nothing) and a random order in
    which all the handed-out events finish."""
    frames: list[tuple[int, int]] = []
    seq = draw(st.integers(0, 50))
    for _ in range(draw(st.integers(0, 25))):
        seq += draw(st.integers(1, 4))
        frames.append((seq, draw(st.integers(0, 4))))
    total = sum(n for _, n in frames)
    order = draw(st.permutations(range(total)))
    return frames, list(order)


@given(streams())
def test_every_completion_order_reaches_the_max(
    case: tuple[list[tuple[int, int]], list[int]],
) -> None:
    """All events handed out (each frame closed), then finished in a random
    order: at every step the cursor is the definition's, never passes an
    unfinished event, never goes back; at the end it is the last seq."""
    frames, order = case
    tracker = AckTracker()
    tickets: list[Ticket] = []
    for seq, n in frames:
        tickets.extend(tracker.add(seq) for _ in range(n))
        tracker.close(seq)
    seqs = [seq for seq, _ in frames]
    closed = set(seqs)
    running: dict[int, int] = {}
    for t in tickets:
        running[t.seq] = running.get(t.seq, 0) + 1
    assert tracker.cursor == oracle(None, seqs, closed, running)
    previous = tracker.cursor
    for i in order:
        tracker.done(tickets[i])
        running[tickets[i].seq] -= 1
        cursor = tracker.cursor
        assert cursor == oracle(None, seqs, closed, running)
        assert all(t.finished or cursor is None or t.seq > cursor for t in tickets)
        assert previous is None or (cursor is not None and cursor >= previous)
        previous = cursor
    assert tracker.cursor == (seqs[-1] if seqs else None)
    assert tracker.pending == 0


@given(st.integers(1, 6), st.permutations(range(6)))
def test_a_commit_is_not_acknowledged_before_all_its_operations(
    n: int, order: list[int]
) -> None:
    """Operations of one commit finish before the rest are handed out: the
    commit's seq stays unacknowledged until it is closed and all are done."""
    tracker = AckTracker(10)
    first = tracker.add(11)
    assert tracker.done(first) is None and tracker.cursor == 10  # 11 still open
    rest = [tracker.add(11) for _ in range(n)]
    tracker.close(11)
    for i in [i for i in order if i < n]:
        assert tracker.cursor == 10
        tracker.done(rest[i])
    assert tracker.cursor == 11


def test_doc_example() -> None:
    t = AckTracker()
    a, b = t.add(5), t.add(5)
    c = t.add(7)
    assert (t.done(c), t.cursor) == (None, None)
    assert (t.done(a), t.done(b)) == (None, 5)
    assert t.close(9) == 9


def test_seq_order_is_enforced() -> None:
    t = AckTracker(100)
    with pytest.raises(AckError) as err:
        t.add(100)  # the starting cursor is acknowledged already
    assert err.value.rule == "ACK_SEQ_ORDER"
    t.add(105)
    with pytest.raises(AckError, match="ACK_SEQ_ORDER"):
        t.add(104)
    t.close(105)
    with pytest.raises(AckError, match="ACK_SEQ_ORDER"):
        t.add(105)  # a closed seq takes no more events
    assert t.close(103) is None  # closing the past is a no-op


def test_misused_tickets() -> None:
    t, other = AckTracker(), AckTracker()
    ticket = t.add(1)
    with pytest.raises(AckError) as err:
        other.done(ticket)
    assert err.value.rule == "ACK_FOREIGN"
    t.done(ticket)
    with pytest.raises(AckError) as err:
        t.done(ticket)
    assert err.value.rule == "ACK_DONE_TWICE"
    assert t.pending == 0


def test_memory_is_released_as_the_cursor_advances() -> None:
    t = AckTracker()
    for seq in range(1, 10_001):
        t.done(t.add(seq))
    t.close(10_000)
    assert t.cursor == 10_000
    assert "seqs=0" in repr(t)
