"""The executor's steps: alone, or several threads' steps in one transaction.

A step is :meth:`Inbox.take <flask_ampalibe.inbox.Inbox.take>` (claim a user's lease and start
their oldest event) or :meth:`Inbox.next_event <flask_ampalibe.inbox.Inbox.next_event>` with an
outcome (record it and start the user's next event).  The steps of threads that arrive together
share a transaction (:class:`~flask_ampalibe.groupcommit.GroupCommit`, up to :data:`STEP_BATCH`):
on SQLite a turn of the one write lock every thread and process waits for, committed sooner when
a webhook's write waits (:meth:`InboxSteps._steps_shared`); on server databases a ``BEGIN`` and a
``COMMIT`` (two round trips and a commit) for several steps, their users' rows locked in one order
(:meth:`InboxSteps._steps_locked`).  A shared transaction that fails is run again step by step.

A base class of :class:`~flask_ampalibe.inbox.Inbox`; callers use ``Inbox``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from .engine import writers_waiting
from . import inbox_sql as sql

if TYPE_CHECKING:
    from .inbox import Claimed

__all__ = ["InboxSteps", "Take", "Advance", "Step", "StepResult", "Writes", "STEP_BATCH", "attempt"]

logger = logging.getLogger(__name__)

#: The most executor steps of concurrent threads one transaction carries (see
#: :attr:`Inbox.step_commit`; on SQLite it commits sooner when a webhook's write waits).
STEP_BATCH = 32

#: A handler's state changes, to write with its event's outcome (see :meth:`Unit.take_writes`).
Writes = tuple[dict[str, "str | None"], dict[str, Any]]


@dataclass
class Take:
    """An executor's step: claim the user's lease and start their oldest event (:meth:`Inbox.take`)."""

    user_id: str
    owner: str
    seconds: float


@dataclass
class Advance(Take):
    """An executor's step: record ``finished``'s outcome and start the user's next event
    (:meth:`Inbox.next_event`)."""

    finished: Claimed
    error: BaseException | None
    writes: Writes | None


Step = Union[Take, Advance]  # (an Advance is a Take with an outcome: tell them apart by Advance)
#: A step's event to handle next (or ``None``) and, for an :class:`Advance`, the error of its
#: step after the outcome was committed.
StepResult = tuple["Claimed | None", "Exception | None"]


class InboxSteps:
    """How :class:`~flask_ampalibe.inbox.Inbox` runs the executor's steps in transactions."""

    engine: Any
    clock: Callable[[], float]

    if TYPE_CHECKING:  # defined by Inbox
        def _take(self, conn: Any, step: Take) -> Claimed | None: ...

        def _step(self, conn: Any, user_id: str, owner: str, seconds: float, finished: Claimed | None,
                  release_tried: bool = False) -> Claimed | None: ...

        def _finish(self, conn: Any, claimed: Claimed, error: BaseException | None, now: float,
                    writes: Writes | None) -> str | None: ...

        def _commit_finish(self, conn: Any, claimed: Claimed, error: BaseException | None, writes: Writes | None,
                           then: Callable[..., Claimed | None] | None = None, *args: Any) -> StepResult: ...

        def _count(self, outcome: str | None) -> None: ...

        def unmoved(self) -> Sequence[Any]: ...

        def move(self, conn: Any, moving: Sequence[Any]) -> int: ...

        def moved(self, mark: int) -> None: ...

    def _step_alone(self, step: Step) -> StepResult:
        """One thread's step in transactions of its own."""
        moving = self.unmoved()  # what the webhook recorded since (see _steps_shared)
        with self.engine.connect() as conn:
            if not isinstance(step, Advance):
                with conn.begin():
                    mark = self.move(conn, moving)
                    claimed = self._take(conn, step)
                self.moved(mark)
                return claimed, None
            if conn.dialect.name == "sqlite":
                # One transaction, so one turn of the write lock per event: the step runs after
                # the outcome, and its failure never undoes the outcome.  (Server databases
                # commit first: a deadlock there rolls back the whole transaction.)
                return self._commit_finish(conn, step.finished, step.error, step.writes,
                                           self._sqlite_step, conn, step, moving)
            _, failure = self._commit_finish(conn, step.finished, step.error, step.writes)
            if failure is not None:
                return None, failure
            with conn.begin():
                return self._step(conn, step.user_id, step.owner, step.seconds, step.finished), None

    def _steps_shared(self, steps: Sequence[Step]) -> list[StepResult]:
        """Several threads' steps in one transaction (SQLite), each as it would run alone.

        The transaction commits early, and the next steps go on in a new one, as soon as a webhook's
        write waits (this process's or another's: :func:`~flask_ampalibe.engine.writers_waiting`),
        so an ack waits for one step, never for a whole batch.  Another process's steps wait for
        the batch: one turn of the lock per batch instead of one per step.  Should a transaction fail, each of
        its steps is run again alone and meets its own error (its caller raises it).
        """
        results: list[StepResult] = []
        # What the webhook recorded in its journal since is moved in first (read before the
        # write lock is taken): a step that takes a user up was woken after the record
        # committed, so it finds it, and an earlier event of a user comes before their later ones.
        moving = self.unmoved()
        while len(results) < len(steps):
            chunk: list[StepResult] = []
            outcomes: list[str | None] = []
            mark = 0
            try:
                with self.engine.connect() as conn, conn.begin():
                    mark = self.move(conn, moving)
                    for step in steps[len(results):]:
                        if isinstance(step, Advance):
                            outcomes.append(self._finish(conn, step.finished, step.error, self.clock(), step.writes))
                            chunk.append(attempt(self._sqlite_step, conn, step))
                        else:
                            chunk.append((self._take(conn, step), None))
                        if len(results) + len(chunk) < len(steps) and writers_waiting(conn, foreground=True):
                            break
            except Exception as exc:
                # The transaction's steps: those done, and the one that raised (if one did).
                failed = steps[len(results):len(results) + len(chunk) + 1]
                logger.debug("executor steps shared by %s threads failed (%s); each runs again on its own",
                             len(failed), type(exc).__name__)
                results.extend(_alone(self._step_alone, step) for step in failed)
                continue
            if moving:
                self.moved(mark)
                moving = []
            results.extend(chunk)
            for outcome in outcomes:
                self._count(outcome)
        return results

    def _steps_locked(self, steps: Sequence[Step]) -> list[StepResult]:
        """Several threads' steps in one transaction on a server database (PostgreSQL, MySQL/MariaDB).

        The steps run in the order of their users, so that two workers' transactions lock users'
        rows in the same order and never wait for each other in a cycle (a deadlock).  Nothing
        here may undo an outcome that is kept: an error anywhere (there a failed statement aborts
        its whole transaction) rolls the transaction back, and each of its steps runs again on
        its own, its outcome committed first (:meth:`_step_alone`).
        """
        order = sorted(range(len(steps)), key=lambda i: steps[i].user_id)
        results: list[StepResult] = [(None, None)] * len(steps)
        outcomes: list[str | None] = []
        try:
            with self.engine.connect() as conn, conn.begin():
                for i in order:
                    step = steps[i]
                    if isinstance(step, Advance):
                        outcomes.append(self._finish(conn, step.finished, step.error, self.clock(), step.writes))
                        results[i] = self._step(conn, step.user_id, step.owner, step.seconds, step.finished), None
                    else:
                        results[i] = self._take(conn, step), None
        except Exception as exc:
            logger.debug("executor steps shared by %s threads failed (%s); each runs again on its own",
                         len(steps), type(exc).__name__)
            return [_alone(self._step_alone, step) for step in steps]
        for outcome in outcomes:
            self._count(outcome)
        return results

    def _sqlite_step(self, conn: Any, step: Advance, moving: Sequence[Any] = ()) -> Claimed | None:
        """:meth:`_step` in the outcome's transaction on SQLite, where it must not undo the outcome.

        After the user's last event read (nothing read ahead) the step is most often the single
        statement that gives the lease back: run alone, since SQLite undoes a failed statement
        without the rest of its transaction.  Anything more runs in a savepoint, so that a
        failure halfway (an event started, then an error) is undone as a whole.

        :param moving: the webhook journal's rows to move in first (see :meth:`Inbox.settle`);
            a move that fails halfway leaves rows that the next one ignores, its mark unchanged.
        """
        user_id, owner, finished = step.user_id, step.owner, step.finished
        self.move(conn, moving)
        idle = not finished.ahead
        if idle and conn.execute(sql.release_if_idle, {"uid": user_id, "holder": owner}).rowcount == 1:
            return None
        with conn.begin_nested():
            return self._step(conn, user_id, owner, step.seconds, finished, release_tried=idle)


def attempt(then: Callable[..., Claimed | None] | None, *args: Any) -> StepResult:
    """What ``then(*args)`` returned, or the error it raised (``then`` may be ``None``: nothing to do)."""
    if then is None:
        return None, None
    try:
        return then(*args), None
    except Exception as exc:  # the step undid its own part (see Inbox._sqlite_step); the outcome stays
        return None, exc


def _alone(run: Callable[[Step], StepResult], step: Step) -> StepResult:
    """``run(step)``, or what it raised (for its caller to raise)."""
    try:
        return run(step)
    except Exception as exc:
        return None, exc
