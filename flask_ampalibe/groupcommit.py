"""Group commit: concurrent writers of one process share a transaction.

The webhook must not answer 200 before its events are committed, and on 2 cores a commit per
request is much of an ack's cost.  With :class:`GroupCommit`, a request that finds no write in
progress writes its rows at once, alone (no waiting for company, so a lone request is as fast
as before).  Requests that arrive while a write is in progress queue; when it ends, the first of
them writes everything queued in *one* transaction and wakes the others.  Each request returns
only once its own rows are committed, so durability is unchanged: nothing is acknowledged that
is not committed.

When a shared transaction fails, every request in it writes its rows again on its own, in its own
thread: one request's bad data (or a deadlock) fails only that request, with the error it would
have met alone.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, Sequence, TypeVar

from .forks import renew_in_child

__all__ = ["GroupCommit"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Waiter(Generic[T, R]):
    __slots__ = ("item", "wake", "done", "result", "committed")

    def __init__(self, item: T, lock: threading.Lock) -> None:
        self.item = item
        #: Notified when this caller's write ended or it may write next: each caller is woken on
        #: its own, never all of them at every write (hundreds of threads may queue).
        self.wake = threading.Condition(lock)
        self.done = False  # the write that carried this item has ended (committed or failed)
        self.committed = False
        self.result: R | None = None


class GroupCommit(Generic[T, R]):
    """Run ``write_many`` over the items of concurrent :meth:`submit` calls, one call at a time.

    :param write_alone: writes one caller's item in a transaction of its own; returns its result.
        Used for a caller that found no write in progress, and for each caller of a failed
        shared write.
    :param write_many: writes several callers' items in one transaction; returns one result per
        item, in order.
    :param max_items: the most items one transaction carries (``None``: every item queued); the
        callers left wait for the next write.  A cap bounds how long a transaction holds a lock
        that others wait for.
    """

    def __init__(self, write_alone: Callable[[T], R], write_many: Callable[[Sequence[T]], list[R]],
                 max_items: int | None = None) -> None:
        self.write_alone = write_alone
        self.write_many = write_many
        self.max_items = max_items
        #: Writes run so far, and how many of them carried several callers' items (tests, the bench).
        self.writes = self.shared_writes = 0
        self._reset()
        renew_in_child(self._reset)  # a lock held by a parent's thread at the fork

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Waiter[T, R]] = []
        self._writing = False

    @property
    def queued(self) -> int:
        """Callers waiting for the write in progress to end (their items not yet written)."""
        with self._lock:
            return len(self._queue)

    def _take_batch(self, me: _Waiter[T, R]) -> list[_Waiter[T, R]]:
        """Everything queued; or, past :attr:`max_items`, ``me`` and the oldest others (lock held)."""
        if self.max_items is None or len(self._queue) <= self.max_items:
            batch, self._queue = self._queue, []
            return batch
        self._queue.remove(me)
        batch = [me, *self._queue[:self.max_items - 1]]
        del self._queue[:self.max_items - 1]
        return batch

    def submit(self, item: T) -> R:
        """Write ``item`` (with those of other callers waiting meanwhile); return once it is committed.

        :raises: what ``write_alone(item)`` raises.
        """
        me: _Waiter[T, R] = _Waiter(item, self._lock)
        with self._lock:
            self._queue.append(me)
            while self._writing and not me.done:
                me.wake.wait()
            if me.done:  # written by another caller's transaction, or that transaction failed
                batch: list[_Waiter[T, R]] = []
            else:  # no write in progress: this caller writes what is queued
                batch = self._take_batch(me)
                self._writing = True
                self.writes += 1
        if not batch:
            if me.committed:
                return me.result  # type: ignore[return-value]
            return self.write_alone(item)
        try:
            if len(batch) == 1:
                return self.write_alone(item)
            self.shared_writes += 1
            try:
                results = self.write_many([w.item for w in batch])
            except Exception as exc:  # each caller writes its own item again, alone, and meets its own error
                logger.debug("a write shared by %s webhook requests failed (%s); each is written again on its own",
                               len(batch), type(exc).__name__)
            else:
                for waiter, result in zip(batch, results):
                    waiter.result, waiter.committed = result, True
        finally:
            with self._lock:
                self._writing = False
                for waiter in batch:
                    waiter.done = True
                    waiter.wake.notify()
                if self._queue:  # the oldest caller left writes next
                    self._queue[0].wake.notify()
        if me.committed:
            return me.result  # type: ignore[return-value]
        return self.write_alone(item)
