"""What the inbox answers about its work as a whole: the users with work nobody is doing (the
executors' sweeps) and the operators' views and actions (``ampalibe inbox …``, the dashboard,
the health endpoint).  :class:`~flask_ampalibe.inbox.Inbox` has these methods; the per-event
path (record, hand out, finish) is in :mod:`flask_ampalibe.inbox`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import and_, func, or_, select

from .engine import read_only
from .inbox_sql import DONE, FAILED, PENDING, REJECTED, RUNNING, STATUSES
from .storage import Store, upsert
from .tables import inbox, leases, meta

__all__ = ["InboxQueries", "WANTED"]

#: The ``amp_meta`` row where a worker with nothing to do asks for some of the others' users.
WANTED = "executor.wanted"


class InboxQueries:
    """The queries over every user's events; a base of :class:`~flask_ampalibe.inbox.Inbox`."""

    store: Store
    if TYPE_CHECKING:  # defined by InboxRecorder
        def settle(self) -> int: ...

    #: Epoch seconds (see :class:`~flask_ampalibe.inbox.Inbox`'s ``clock``).
    clock: Callable[[], float]

    @property
    def engine(self) -> Any:
        return self.store.engine

    def ready_users(self, limit: int = 100) -> list[str]:
        """Users with unfinished events whose lease is free or expired (work nobody is doing)."""
        now = self.clock()
        return self._unfinished_users(or_(leases.c.owner.is_(None), leases.c.expires_at < now), limit)

    def expired_users(self, limit: int = 100) -> list[str]:
        """Users with unfinished events whose lease expired (its holder died or hung)."""
        now = self.clock()
        return self._unfinished_users(and_(leases.c.owner.is_not(None), leases.c.expires_at < now), limit)

    def stalled_users(self, waiting_seconds: float, limit: int = 100) -> list[str]:
        """Users with unfinished events that nobody is handling *and* nobody is about to.

        Those whose lease expired (its holder died or hung), and those whose lease is free
        while an unfinished event was recorded more than ``waiting_seconds`` ago (its wake-up
        was lost).  Unlike :meth:`ready_users`, a user recorded a moment ago, whose wake-up is
        still queued (the Celery executor's broker), is not among them.
        """
        now = self.clock()
        return self._unfinished_users(
            or_(and_(leases.c.owner.is_not(None), leases.c.expires_at < now),
                and_(leases.c.owner.is_(None), inbox.c.received_at < now - waiting_seconds)), limit)

    def waiting_elsewhere(self, owner: str) -> bool:
        """Whether a user whose lease another worker holds has events waiting behind the one
        being handled (a backlog that worker drains alone)."""
        now = self.clock()
        self.store.ensure()
        with read_only(self.engine) as conn:
            return conn.execute(
                select(inbox.c.id).select_from(inbox.join(leases, leases.c.user_id == inbox.c.user_id))
                .where(inbox.c.status == PENDING, leases.c.owner.is_not(None), leases.c.owner != owner,
                       leases.c.expires_at >= now)
                .limit(1)
            ).first() is not None

    def want_work(self, owner: str) -> None:
        """Ask the workers that hold users with a backlog to give some of them up (``owner`` has
        nothing to do): see :meth:`wanted`."""
        self.store.ensure()
        with self.engine.begin() as conn:
            upsert(conn, meta, {"name": WANTED, "value": f"{self.clock():.6f} {owner}"}, ["name"])

    def wanted(self) -> tuple[float, str] | None:
        """The latest :meth:`want_work`: when, and by whom (``None``: never)."""
        self.store.ensure()
        with read_only(self.engine) as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.name == WANTED)).scalar()
        if not value:
            return None
        at, _, owner = str(value).partition(" ")
        try:
            return float(at), owner
        except ValueError:
            return None

    def _unfinished_users(self, lease_state: Any, limit: int) -> list[str]:
        """Up to ``limit`` users with unfinished events whose lease row meets ``lease_state``
        (the webhook's journal moved in first: a sweep finds what a dead process recorded)."""
        self.store.ensure()
        self.settle()
        with read_only(self.engine) as conn:
            rows = conn.execute(
                select(inbox.c.user_id).distinct()
                .select_from(inbox.join(leases, leases.c.user_id == inbox.c.user_id))
                .where(inbox.c.status.in_((PENDING, RUNNING)), lease_state)
                .limit(limit)
            ).all()
        return [r.user_id for r in rows]

    # -- operators ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts by status and the age in seconds of the oldest unfinished event (the webhook's
        journal moved in first)."""
        self.store.ensure()
        self.settle()
        with read_only(self.engine) as conn:
            counts: dict[str, int] = dict(
                conn.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status)).all())
            oldest = conn.execute(
                select(func.min(inbox.c.received_at)).where(inbox.c.status.in_((PENDING, RUNNING)))
            ).scalar()
        out: dict[str, Any] = {s: int(counts.get(s, 0)) for s in STATUSES}
        out["received"] = sum(out.values())
        out["oldest_pending_age"] = round(self.clock() - oldest, 3) if oldest else 0.0
        return out

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """The failed events, newest first, with their error."""
        return self._newest(FAILED, (inbox.c.attempts, inbox.c.error, inbox.c.finished_at), limit)

    def rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        """The webhook items rejected at reception, newest first, with the reason and the item."""
        return self._newest(REJECTED, (inbox.c.error, inbox.c.received_at, inbox.c.body), limit)

    def _newest(self, status: str, details: tuple[Any, ...], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events in ``status``, newest first: who and what, then ``details``."""
        self.store.ensure()
        self.settle()
        with read_only(self.engine) as conn:
            rows = conn.execute(
                select(inbox.c.id, inbox.c.event_key, inbox.c.user_id, inbox.c.kind, *details)
                .where(inbox.c.status == status).order_by(inbox.c.id.desc()).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def replay(self, event_id: int | None = None) -> list[str]:
        """Put one failed event (or all of them) back to pending; returns the users concerned."""
        where = self._failed_where(event_id)
        with self.engine.begin() as conn:
            users = [r.user_id for r in conn.execute(select(inbox.c.user_id).distinct().where(*where)).all()]
            conn.execute(inbox.update().where(*where).values(status=PENDING, error=None, attempts=0))
        return users

    def discard(self, event_id: int | None = None) -> int:
        """Delete one failed event (or all of them) for good; returns how many."""
        where = self._failed_where(event_id)
        with self.engine.begin() as conn:
            return conn.execute(inbox.delete().where(*where)).rowcount

    def _failed_where(self, event_id: int | None) -> list[Any]:
        """The conditions for failed event ``event_id`` (every failed one for ``None``)."""
        self.store.ensure()
        where = [inbox.c.status == FAILED]
        if event_id is not None:
            where.append(inbox.c.id == event_id)
        return where

    def purge(self, older_than_seconds: float) -> int:
        """Delete handled events finished, and rejected items received, more than
        ``older_than_seconds`` ago (failed events stay until replayed)."""
        self.store.ensure()
        limit = self.clock() - older_than_seconds
        with self.engine.begin() as conn:
            return conn.execute(
                inbox.delete().where(and_(inbox.c.status.in_((DONE, REJECTED)), inbox.c.finished_at < limit))
            ).rowcount
