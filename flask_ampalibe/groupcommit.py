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
    __slots__ = ("item", "gate", "done", "result", "committed")

    def __init__(self, item: T) -> None:
        self.item = item
        #: Held until this caller may go on: its write ended, or it writes next.  A lock of its
        #: own, released once: each caller is woken alone, and a woken caller takes no lock that
        #: the others wait for (hundreds of threads may queue).
        self.gate = threading.Lock()
        self.gate.acquire()
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

        The callers queue in order of arrival; a write that ends hands the next one to the
        oldest caller left (who writes what is queued then), or ends the writing when none is.

        :raises: what ``write_alone(item)`` raises.
        """
        me: _Waiter[T, R] = _Waiter(item)
        with self._lock:
            self._queue.append(me)
            leads = not self._writing
            if leads:
                self._writing = True
                batch = self._start(me)
        if not leads:
            me.gate.acquire()  # released by the write that carried this item, or to write next
            if me.done:
                return me.result if me.committed else self.write_alone(item)  # type: ignore[return-value]
            with self._lock:
                batch = self._start(me)
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
                for waiter in batch:
                    waiter.done = True
                following = self._queue[0] if self._queue else None
                self._writing = following is not None
            if following is not None:  # first: the next write starts while the others wake
                following.gate.release()
            for waiter in batch:
                if waiter is not me:
                    waiter.gate.release()
        if me.committed:
            return me.result  # type: ignore[return-value]
        return self.write_alone(item)

    def _start(self, me: _Waiter[T, R]) -> list[_Waiter[T, R]]:
        """``me``'s write begins (lock held): what it carries."""
        self.writes += 1
        return self._take_batch(me)
