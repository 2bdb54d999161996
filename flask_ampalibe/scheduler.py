"""Scheduled jobs: a function run on a cron schedule, once per run time across every worker and host.

::

    import flask_ampalibe as ampalibe

    bot = ampalibe.init(Configuration())

    @ampalibe.schedule("0 9 * * 1-5", tz="Indian/Antananarivo")
    def morning_news(when):
        for user_id in subscribers():
            bot.chat.send_text(user_id, f"News of {when:%d %B}",
                               messaging_type="MESSAGE_TAG", tag="CONFIRMED_EVENT_UPDATE")

Every process serving the bot runs a small scheduler thread.  At each run time ("slot") they all
try to claim the slot in the ``amp_job`` table with one conditional ``UPDATE``; exactly one
wins and runs the function, so ten gunicorn workers on three hosts send one newsletter, not
thirty.  The slot is the run time itself (in whole minutes since the epoch), so hosts whose
clocks differ by a few seconds still agree on it.

- A slot nobody could run (every process was down) runs late if a process comes up within
  ``grace`` seconds of it; older slots are skipped, never run in bulk.
- A job that raises is logged and not retried: the slot counts as done.
- Jobs run inside the app context (``translate``, ``current_app`` work) and in their own thread,
  so a long job does not delay the others.  An ``async def`` job runs on the process's event
  loop (see :mod:`flask_ampalibe.aio`), its thread waiting for it.

The thread starts lazily, never at import: on the first request the app serves (unless the app
is in testing mode), or explicitly with :func:`start_scheduler` (from a gunicorn
``post_worker_init`` hook).
Tests call :meth:`Scheduler.tick` with the time they want.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import aio
from .context import current_state, default_router
from .cron import Cron, ScheduleError
from .dberrors import is_unavailable
from .inbox import lease_owner
from .router import Router, _qualname, call_handler
from .storage import Store, insert_ignore
from .tables import jobs as jobs_table

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from flask import Flask

    from .state import AmpalibeState

__all__ = ["Cron", "Job", "Scheduler", "ScheduleError", "schedule", "jobs", "scheduler_for", "start_scheduler"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Default ``grace``: how late (in seconds) a missed run time may still run.
DEFAULT_GRACE = 300.0


# -- jobs and their registry ---------------------------------------------------------------------
@dataclass
class Job:
    """A scheduled function.

    :ivar name: the job's identity in ``amp_job``; keep it stable across deploys.
    :ivar cron: when it runs.
    :ivar tz: the time zone ``cron`` is read in.
    :ivar grace: how late (seconds) a missed run time may still run.
    """

    name: str
    cron: Cron
    func: Callable[..., Any]
    tz: tzinfo = timezone.utc
    grace: float = DEFAULT_GRACE
    #: Positional arguments of each call (``crontab(..., args=(...))``, as aiocron's); none: ``when=``.
    args: tuple = ()
    #: ``False`` while a job registered with ``start=False`` waits for ``func.start()``.
    enabled: bool = True

    def due_slot(self, now: float) -> int | None:
        """The latest run time within ``grace`` before ``now``, in units of :attr:`Cron.step`
        (minutes, or seconds for a 6-field expression) since the epoch."""
        step = self.cron.step
        latest = math.floor(now / step)
        earliest = math.ceil((now - self.grace) / step)
        for unit in range(latest, min(earliest, latest) - 1, -1):
            if self.cron.matches(datetime.fromtimestamp(unit * step, self.tz)):
                return unit
        return None

    def next_run(self, after: datetime | None = None) -> datetime:
        """The next run time after ``after`` (default: now), in the job's time zone."""
        start = (after or datetime.now(timezone.utc)).astimezone(self.tz)
        return self.cron.next_after(start)


_lock = threading.Lock()


def jobs(router: Router | None = None) -> list[Job]:
    """The jobs registered on ``router`` (default: the module-level router)."""
    return list((router or default_router()).jobs.values())


def schedule(cron: str, name: str | None = None, *, tz: "str | tzinfo | None" = None,
             grace: float = DEFAULT_GRACE, router: Router | None = None, func: Callable[..., Any] | None = None,
             start: bool = True, args: tuple = ()) -> Any:
    """Run the decorated function at each run time of ``cron``, once across all workers and hosts.

    The function may take ``when`` (the run time, an aware ``datetime``) and may be ``async
    def``; it runs in the app context, outside any webhook, so it sends with ``bot.chat`` like any script would.

    :param cron: a 5-field cron expression (see :class:`Cron`), e.g. ``"*/5 * * * *"``.
    :param name: the job's identity in the database (default ``module.function``); two
        functions cannot share one.
    :param tz: time zone of the cron times (an IANA name such as ``"Europe/Paris"``, or a
        ``tzinfo``); default UTC, so every host agrees whatever its local time.
    :param grace: seconds a missed run time may still run late (default 300).
    :param router: where to register (default: the module-level router ``@ampalibe.command`` uses;
        ``@bot.schedule(...)`` of an :class:`~flask_ampalibe.Ampalibe` passes its own).
    :param func: Ampalibe 1.1.9's (aiocron's) way without a decorator:
        ``ampalibe.crontab("0 9 * * *", func=morning_news)`` registers ``func`` and returns it.
    :param start: ``False`` registers the job paused: it runs once ``func.start()`` is called
        (``func.stop()`` pauses it again), as aiocron's ``start=False``.
    :param args: positional arguments each run gets (then no ``when``), as aiocron's ``args``.
    :returns: a decorator that returns the function unchanged (with ``func=``, the function).

    Example::

        @ampalibe.schedule("*/5 * * * *")
        def heartbeat():
            bot.chat.send_text(ADMIN_ID, "still alive")
    """
    parsed = Cron(cron)
    zone = _zone(tz)

    def deco(func: F) -> F:
        target = router or default_router()
        job_name = name or _qualname(func)
        job = Job(job_name, parsed, func, zone, float(grace), tuple(args), enabled=bool(start))
        with _lock:
            target.add_job(job)
        if not start:
            def start_job() -> None:
                job.enabled = True
                _start_default()

            def stop_job() -> None:
                job.enabled = False

            func.start, func.stop = start_job, stop_job  # type: ignore[attr-defined]
        _connect_autostart()
        return func
    if func is not None:
        return deco(func)
    return deco


def _start_default() -> None:
    """Start the configured bot's scheduler if it is not running (a job was just started)."""
    try:
        state = current_state()
    except Exception:
        return  # no bot yet: its scheduler starts with it
    if not state.app.testing:
        scheduler_for(state).start()


def _zone(tz: "str | tzinfo | None") -> tzinfo:
    if tz is None:
        return timezone.utc
    if isinstance(tz, tzinfo):
        return tz
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        return ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"time zone {tz!r} is not known; use an IANA name such as 'Europe/Paris' "
            "(on systems without a time zone database: pip install tzdata)."
        ) from None


# -- running -------------------------------------------------------------------------------------
class Scheduler:
    """Runs an app's jobs: one per process, started lazily, safe after a fork.

    :param router: where the jobs are registered (read at each tick: late registrations count).
    :param store: the app's database, where slots are claimed.
    :param app_context: returns the context each job runs in (the app's ``app.app_context``).
    :param clock: returns the time in seconds since the epoch (tests shift it).

    :func:`scheduler_for` makes the one of an app.
    """

    def __init__(self, router: Router, store: Store, app_context: Callable[[], AbstractContextManager[Any]],
                 clock: Callable[[], float] = time.time) -> None:
        self.router = router
        self.store = store
        self.app_context = app_context
        self.clock = clock
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running: dict[str, threading.Thread] = {}
        self._pid = 0

    @property
    def jobs(self) -> list[Job]:
        """The jobs of the app's router (read at each tick, so late registrations count)."""
        return jobs(self.router)

    @property
    def owner(self) -> str:
        """Who claims slots: ``host:pid``, recorded in ``amp_job.owner``."""
        return lease_owner()

    def claim(self, name: str, slot: int) -> bool:
        """Claim run time ``slot`` of job ``name``; ``True`` for exactly one caller across all processes.

        One conditional ``UPDATE`` decides: the row moves forward to ``slot`` only if it is
        behind it, and the database lets a single transaction do that.
        """
        store = self.store
        store.ensure()
        with store.engine.begin() as conn:
            insert_ignore(conn, jobs_table, [{"name": name, "slot": -1, "owner": None, "ran_at": None}])
            result = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.name == name, jobs_table.c.slot < slot)
                .values(slot=slot, owner=self.owner, ran_at=time.time())
            )
            return result.rowcount == 1

    def tick(self, now: "float | datetime | None" = None, *, background: bool = False) -> list[str]:
        """Run the jobs due at ``now`` whose slot this process wins.

        :param now: the time (a timestamp or an aware ``datetime``); default: the clock.
        :param background: run each job in its own thread (the scheduler thread does) instead of
            before returning (tests and one-shot runs do).
        :returns: the names of the jobs this call ran (or started).
        """
        if now is None:
            now = self.clock()
        elif isinstance(now, datetime):
            if now.tzinfo is None:
                raise ScheduleError("tick(now=...) needs an aware datetime (with tzinfo), or a timestamp.")
            now = now.timestamp()
        ran = []
        for job in self.jobs:
            if not job.enabled:
                continue
            slot = job.due_slot(now)
            if slot is None:
                continue
            with self._lock:
                busy = job.name in self._running
            if busy:
                logger.warning("scheduled job %s is still running; this process leaves its next run to others",
                               job.name)
                continue
            if not self.claim(job.name, slot):
                continue
            ran.append(job.name)
            if background:
                thread = threading.Thread(target=self._run, args=(job, slot), name=f"ampalibe-job-{job.name}",
                                          daemon=True)
                with self._lock:
                    self._running[job.name] = thread
                thread.start()
            else:
                self._run(job, slot)
        return ran

    def _run(self, job: Job, slot: int) -> None:
        when = datetime.fromtimestamp(slot * job.cron.step, job.tz)
        logger.info("running scheduled job %s for %s", job.name, when.isoformat())
        try:
            with self.app_context():
                if job.args:
                    result = job.func(*job.args)
                else:
                    result = call_handler(job.func, when=when)
                if inspect.isawaitable(result):  # an async def job: it awaits on the process's loop
                    aio.run(result)
        except Exception:
            logger.exception("scheduled job %s (run time %s) failed; it runs again at its next time",
                             job.name, when.isoformat())
        finally:
            with self._lock:
                if self._running.get(job.name) is threading.current_thread():
                    del self._running[job.name]

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the scheduler thread of this process if the app has jobs (idempotent, fork-aware).

        :returns: whether a thread is running.
        """
        if self._pid == os.getpid():
            return True
        if self.stopping.is_set() or not self.jobs:
            return False
        with self._lock:
            if self._pid != os.getpid():
                self._running.clear()  # a forked child has none of the parent's threads
                self._thread = threading.Thread(target=self._loop, name="ampalibe-scheduler", daemon=True)
                self._thread.start()
                self._pid = os.getpid()
        return True

    def _loop(self) -> None:
        # Tick at once (a run time missed while starting up may still be within grace), then just
        # after each minute starts; a tick that overran into the next minute is followed at once.
        next_tick = self.clock()
        while not self.stopping.wait(max(0.0, next_tick - self.clock())):
            now = self.clock()
            try:
                self.tick(now, background=True)
            except Exception as exc:
                if is_unavailable(exc):  # an outage: the executor's backoff reports it; one line here
                    logger.warning("scheduler tick skipped: the database is unreachable; trying again next minute")
                else:
                    logger.exception("scheduler tick failed; trying again next minute")
            step = min((job.cron.step for job in self.jobs), default=60)  # 1 with a seconds job
            next_tick = (math.floor(now / step) + 1) * step + 0.01

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for running jobs."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [t for t in (self._thread, *self._running.values()) if t is not None]
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


def scheduler_for(app: "Flask | AmpalibeState") -> Scheduler:
    """The :class:`Scheduler` of ``app`` (created on first use, kept in ``app.extensions["ampalibe"]``)."""
    state = app.extensions["ampalibe"] if hasattr(app, "extensions") else app
    scheduler = getattr(state, "scheduler", None)
    if scheduler is None:
        with _lock:
            scheduler = getattr(state, "scheduler", None)
            if scheduler is None:
                scheduler = state.scheduler = Scheduler(state.router, state.store, state.app.app_context)
    return scheduler


def start_scheduler(app: "Flask | None" = None) -> bool:
    """Start the scheduler thread of ``app`` (default: the app :func:`flask_ampalibe.init` set up).

    Call it where a worker process starts, e.g. in the project's ``gunicorn.conf.py``::

        def post_worker_init(worker):
            flask_ampalibe.scheduler.start_scheduler(worker.wsgi)

    :returns: whether a scheduler thread runs (``False`` when the app has no jobs).
    """
    if app is None:
        return scheduler_for(current_state()).start()
    return scheduler_for(app).start()


def _on_request(sender: Any, **extra: Any) -> None:
    state = getattr(sender, "extensions", {}).get("ampalibe")
    if state is None or sender.testing:
        return
    try:
        scheduler_for(state).start()
    except Exception:  # never fail a request because the scheduler could not start
        logger.exception("could not start the scheduler")


_connected = False


def _connect_autostart() -> None:
    global _connected
    if not _connected:
        from flask import request_started
        request_started.connect(_on_request)
        _connected = True

