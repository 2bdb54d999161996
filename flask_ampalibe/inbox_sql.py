"""The inbox's per-event statements, built once as SQLAlchemy Core constructs (see
``storage._constructs`` for why) and run by :class:`flask_ampalibe.inbox.Inbox`.

Parameters are named with :func:`~sqlalchemy.bindparam`; each statement's comment says what it does.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, func, literal, null, or_, select

from .tables import inbox, leases, meta

PENDING, RUNNING, DONE, FAILED, REJECTED = "pending", "running", "done", "failed", "rejected"
#: Every status an inbox row can have, in the order ``ampalibe inbox stats`` shows them.
STATUSES = (PENDING, RUNNING, DONE, FAILED, REJECTED)
#: How many of a user's ready events one step of the executor reads at once (see
#: :meth:`flask_ampalibe.inbox.Inbox.next_event`).
READ_AHEAD = 12


def is_unfinished(status: Any) -> Any:
    """``status IN ('pending', 'running')`` as two plain parameters: ``in_()`` of a list of values
    would be an "expanding" parameter, rendered again at every execution (~30 µs a statement)."""
    return status.in_([literal(PENDING), literal(RUNNING)])


unfinished = is_unfinished(inbox.c.status)
claim = (leases.update()
          .where(leases.c.user_id == bindparam("uid"),
                 or_(leases.c.owner.is_(None), leases.c.expires_at < bindparam("now")))
          .values(owner=bindparam("new_owner"), expires_at=bindparam("until")))
renew_one = (leases.update().where(leases.c.user_id == bindparam("uid"), leases.c.owner == bindparam("holder"))
              .values(expires_at=bindparam("until")))
release = (leases.update().where(leases.c.user_id == bindparam("uid"), leases.c.owner == bindparam("holder"))
            .values(owner=None, expires_at=0.0))
oldest = (select(inbox.c.id, inbox.c.event_key, inbox.c.timestamp, inbox.c.body, inbox.c.attempts)
           .where(inbox.c.user_id == bindparam("uid"), unfinished)
           .order_by(inbox.c.timestamp, inbox.c.id).limit(1))
start = inbox.update().where(inbox.c.id == bindparam("event_id")).values(status=RUNNING, attempts=bindparam("n"))
# Where the database has UPDATE ... RETURNING (SQLite >= 3.35, PostgreSQL): oldest and start in
# one statement.  The subquery reads an alias, so it is not correlated to the updated table.
queued = inbox.alias("queued")
start_oldest = (
    inbox.update()
    .where(inbox.c.id == select(queued.c.id)
           .where(queued.c.user_id == bindparam("uid"), is_unfinished(queued.c.status))
           .order_by(queued.c.timestamp, queued.c.id).limit(1).scalar_subquery())
    .values(status=RUNNING, attempts=inbox.c.attempts + 1)
    .returning(inbox.c.id, inbox.c.event_key, inbox.c.timestamp, inbox.c.body, inbox.c.attempts)
)
# A user's next ready events (see Inbox.next_event), read ahead and started one by one with
# start_read_ahead: the one given, if the lease is still this worker's with at least half its
# time left (the sweeper renews it every third) and no unfinished event of the user comes before
# it (one recorded since, with an earlier timestamp); otherwise the full step runs.
read_ahead = oldest.limit(READ_AHEAD)
earlier = inbox.alias("earlier")
start_read_ahead = (
    inbox.update()
    .where(inbox.c.id == bindparam("event_id"), unfinished,
           select(leases.c.user_id).where(leases.c.user_id == bindparam("uid"), leases.c.owner == bindparam("holder"),
                                          leases.c.expires_at >= bindparam("fresh_until")).exists(),
           ~select(earlier.c.id).where(
               earlier.c.user_id == bindparam("uid"), is_unfinished(earlier.c.status),
               earlier.c.id != bindparam("event_id"),
               or_(earlier.c.timestamp < bindparam("ts"),
                   and_(earlier.c.timestamp == bindparam("ts"), earlier.c.id < bindparam("event_id")))).exists())
    .values(status=RUNNING, attempts=inbox.c.attempts + 1)
)
# The lease given back if the user has no unfinished event: the last step of a drain in one statement.
release_if_idle = (
    leases.update()
    .where(leases.c.user_id == bindparam("uid"), leases.c.owner == bindparam("holder"),
           ~select(inbox.c.id).where(inbox.c.user_id == bindparam("uid"), unfinished).exists())
    .values(owner=None, expires_at=0.0)
)
give_up = (inbox.update().where(inbox.c.id == bindparam("event_id"))
            .values(status=FAILED, attempts=bindparam("n"), finished_at=bindparam("now"), error=bindparam("err")))
# Only a running event: if this worker's lease lapsed and another one finished it meanwhile,
# that outcome stands.
end = (inbox.update().where(inbox.c.id == bindparam("event_id"), inbox.c.status == RUNNING)
        .values(status=bindparam("outcome"), finished_at=bindparam("now"), error=bindparam("err")))
#: The users of a list that have a lease row.
leases_of = select(leases.c.user_id).where(leases.c.user_id.in_(bindparam("users", expanding=True)))
any_unfinished = select(inbox.c.id).where(inbox.c.user_id == bindparam("uid"), unfinished).limit(1)


def _record_with_leases() -> Any:
    """PostgreSQL: the webhook's inbox rows and its users' lease rows, both skipping rows that
    exist, in one statement, so that one round trip in autocommit is one atomic write.  The rows
    arrive as one array per column (``unnest``): the same statement for any number of rows, so
    SQLAlchemy compiles it once (a multi-row ``VALUES`` has no cache key).

    Rows that exist are skipped by a look-up on the statement's snapshot before the
    ``ON CONFLICT`` check (which stays, for rows inserted concurrently): the unique check waits
    for any transaction that is updating the row it meets, and the executor's transactions
    update the leases (and the inbox rows) of the users they handle, so the ack would wait for
    them.

    The look-up is a scalar subquery per row (``(SELECT … LIMIT 1) IS NULL``), not ``NOT
    EXISTS``: PostgreSQL turns ``NOT EXISTS`` into an anti-join, and the generic plan that
    psycopg's prepared statement gets after a few runs is made with the table's statistics of
    that moment.  On a new database they are those of an empty table (autovacuum analyses it a
    minute later at the earliest), so the plan read the whole inbox into a hash at every ack,
    which cost more the longer the bot ran.  A scalar subquery stays a probe of the unique index
    per row whatever the statistics say."""
    from sqlalchemy.dialects.postgresql import ARRAY, insert

    given = (func.unnest(*[bindparam(c, type_=ARRAY(inbox.c[c].type)) for c in RECORD_COLUMNS])
             .table_valued(*RECORD_COLUMNS).render_derived())
    known = inbox.alias("known")
    new_events = select(*given.c).where(
        select(known.c.id).where(known.c.event_key == given.c.event_key).limit(1).scalar_subquery().is_(None))
    events = insert(inbox).from_select(RECORD_COLUMNS, new_events).on_conflict_do_nothing().cte("recorded")
    users = func.unnest(bindparam("users", type_=ARRAY(leases.c.user_id.type))).table_valued("user_id").render_derived()
    held = leases.alias("held")
    free = select(users.c.user_id, null(), literal(0.0)).where(
        select(held.c.user_id).where(held.c.user_id == users.c.user_id).limit(1).scalar_subquery().is_(None))
    return insert(leases).from_select(["user_id", "owner", "expires_at"], free).on_conflict_do_nothing().add_cte(events)


#: The columns :data:`record_with_leases` takes, each as an array (and ``users``).
RECORD_COLUMNS = tuple(c.name for c in inbox.c if c.name != "id")
record_with_leases = _record_with_leases()
# The webhook journal's mark: the highest ``seq`` moved into the inbox (see flask_ampalibe.journal).
journal_mark = select(meta.c.value).where(meta.c.name == bindparam("name"))
