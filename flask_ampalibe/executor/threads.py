"""The default executor: events handled in the web worker after the 200, in elastic threads or,
for ``async def`` bots, on the process's event loop (:class:`ThreadExecutor`).
"""
from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Iterable

from .. import aio
from ..aio import ElasticPool
from ..config import DEFAULT_GC_THRESHOLD, DEFAULT_HANDLER_NICE, DEFAULT_MAX_CONCURRENCY
from ..dberrors import is_unavailable, outage_for
from ..inbox import Claimed, Inbox
from .base import Executor, Handle

__all__ = ["ThreadExecutor", "ensure_file_limit", "ensure_gc_threshold"]

logger = logging.getLogger(__name__)


#: Threads that run the inbox's statements between the events of ``async def`` bots.
STEP_THREADS = 16
#: The CPU governor (:meth:`ThreadExecutor._govern`): how often it looks; the process's CPU use
#: (in cores) above which it may lower the limit and below which it raises it; the CPU its handlers
#: must use (in cores) for it to lower the limit, half of which lets it raise the limit again
#: (below, the process is busy with the webhook's acks, which fewer handlers would hardly speed
#: up); the lowest limit.
GOVERN_EVERY, CPU_HIGH, CPU_LOW, HANDLERS_HIGH, GOVERN_FLOOR = 0.25, 0.9, 0.6, 0.5, 8


#: How long a user's turn at a slot lasts while others wait for one: they keep the slot for their
#: next event until then, and go to the back of the queue after (see :class:`ThreadExecutor`).
TURN_SECONDS = 10.0
#: Open files to allow per event in flight (its Graph API connection, one to the API its handler
#: calls, a database connection), and for the rest of the process (see :func:`ensure_file_limit`).
FILES_PER_EVENT, FILES_BASE = 3, 256


def ensure_file_limit(max_concurrency: int) -> int:
    """Raise this process's soft limit on open files (``ulimit -n``, often 1024) towards what
    ``max_concurrency`` events in flight may need, as far as the hard limit allows; warn when
    the hard limit is lower.  Never lowers it.

    :returns: the soft limit now (``-1``: unlimited, or not a POSIX system).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    need = FILES_BASE + FILES_PER_EVENT * max_concurrency
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - refused by the system
            logger.warning("could not raise the open files limit from %s to %s: %s", soft, target, exc)
    if soft < need:
        logger.warning("open files limit %s is low for AMPALIBE_MAX_CONCURRENCY=%s (about %s wanted: "
                       "%s per handler in flight and %s more); raise it (ulimit -n, LimitNOFILE= in a "
                       "systemd unit) or lower AMPALIBE_MAX_CONCURRENCY", soft, max_concurrency, need,
                       FILES_PER_EVENT, FILES_BASE)
    return soft


def ensure_gc_threshold(threshold: int) -> int:
    """Raise the garbage collector's first threshold (:func:`gc.set_threshold`) to ``threshold``
    unless it is that high already (an app that set a higher one keeps it); ``0`` leaves it.
    Never lowers it; the other thresholds stay as they are.

    Under load a process that handles hundreds of events at once holds many live objects (their
    threads, the users and events waiting); at Python's default of 700 its collections ran
    hundreds of times per bench run, the full ones 0.1 s and more each, every thread of the
    process stopped meanwhile (bench/ANALYSIS.md, the eleventh session).  Requests make little
    cyclic garbage (Werkzeug's URL matcher leaves one small cycle per request), so collecting
    less often costs little memory.

    :returns: the first threshold now.
    """
    first, *rest = gc.get_threshold()
    if threshold > first:
        gc.set_threshold(threshold, *rest)
        first = threshold
    return first


class ThreadExecutor(Executor):
    """Handles events after the response, one at a time per user, up to ``max_concurrency`` users at once.

    Plain handlers run in threads of an elastic pool: a thread starts when a user has events
    and no thread is free, and ends after 10 s idle, so a bot whose handlers wait on the network
    has hundreds in flight while a quiet one keeps none.  When the bot has ``async def``
    functions, each event runs as a coroutine on the process's event loop instead
    (:meth:`Dispatcher.run_async <flask_ampalibe.dispatch.Dispatcher.run_async>`): a waiting
    handler holds no thread; threads only run the inbox's statements between two events.

    CPU governor: while the process's CPU is saturated and its handlers use half a core or more
    of it (handlers that compute rather than wait), fewer events are admitted at once (never
    fewer than 8), so the webhook's threads still get the GIL and the ack stays fast; the limit
    climbs back to ``max_concurrency`` as soon as the handlers in flight wait again.  A process
    saturated by its acks alone keeps admitting handlers that wait.

    Fairness: when every slot is taken, a user whose turn has lasted ``turn_seconds`` goes to the
    back of the queue once an event is done, before their next one, so one user with 500 messages
    gets one slot, not all of them, and gives it up every ``turn_seconds``.  Until then the user
    keeps the slot: most users' few events are done in one turn, their lease given back at the
    end, instead of waiting in the queue between two events with it held (where no other worker
    may take them up; see bench/ANALYSIS.md, the seventeenth session).

    A background thread renews the leases of the users this process is handling (every third
    of ``lease_seconds``, so a handler may run longer than the lease), picks up abandoned work
    every ``poll_seconds`` (all its work, and sooner, with ``fed_by_sweeps``) and purges old
    handled events.  Threads start on first use in each
    process (never at import, and again after a fork), or with :meth:`start`.

    :param max_concurrency: events handled at once in this process (``threads`` is its old
        name).  Each plain handler in flight holds a thread (see the README for the memory cost).
    :param govern: lower the number of events admitted at once while the process's CPU is
        saturated (handlers that compute rather than wait), so the webhook's acks stay fast.
    :param turn_seconds: how long a user keeps a slot for their next events while others wait
        for one (``0``: they give it up after every event).
    :param fed_by_sweeps: nothing notifies this executor, its sweeps find all its work
        (``ampalibe worker``; see :attr:`Executor.fed_by_sweeps`).
    :param gc_threshold: the garbage collector's first threshold while it runs (raised only;
        ``0`` leaves it, see :func:`ensure_gc_threshold`).
    :param nice: how much lower than the process's the CPU priority of the threads that run
        handlers and their steps is (``AMPALIBE_HANDLER_NICE``; see :mod:`flask_ampalibe.priority`).
    """

    #: The governor's clocks (tests replace them, and :meth:`handlers_cpu`): wall time, and this
    #: process's CPU time.
    clock: Callable[[], float] = staticmethod(time.monotonic)
    cpu_clock: Callable[[], float] = staticmethod(time.process_time)

    def __init__(self, inbox: Inbox, handle: Handle, max_concurrency: int | None = None, threads: int | None = None,
                 govern: bool = True, fed_by_sweeps: bool = False, gc_threshold: int = DEFAULT_GC_THRESHOLD,
                 nice: int = DEFAULT_HANDLER_NICE, turn_seconds: float = TURN_SECONDS, **kwargs: float) -> None:
        super().__init__(inbox, handle, **kwargs)
        self.fed_by_sweeps = fed_by_sweeps
        self.gc_threshold = gc_threshold
        self.nice = nice
        self.turn_seconds = turn_seconds
        cap = max_concurrency if max_concurrency is not None else threads
        self.max_concurrency = max(1, int(cap if cap is not None else DEFAULT_MAX_CONCURRENCY))
        #: Events admitted at once now: ``max_concurrency``, lowered while the process's CPU is
        #: saturated (see :meth:`_govern`; ``govern = False`` turns that off).
        self.limit = self.max_concurrency
        self.govern = govern
        #: The most events this executor had in flight at once (for tests and the bench).
        self.peak_in_flight = 0
        self._reset()

    @property
    def threads(self) -> int:
        """Former name of :attr:`max_concurrency`."""
        return self.max_concurrency

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._active: dict[str, bool] = {}  # user -> "notified again while queued or running"
        self._queued_fresh: set[str] = set()  # users queued who have not started yet
        self._turns: dict[str, float] = {}  # user -> when their turn at a slot began (monotonic)
        self._giving_up: set[str] = set()  # users to give to another worker after their event (balance)
        self._balanced = 0.0  # the last request for work answered (Inbox.wanted's time)
        # Work waiting for a slot: (user, None) to begin, (user, event) to handle that event.
        self._waiting: collections.deque[tuple[str, Claimed | None]] = collections.deque()
        self._in_flight = 0
        self._pool: ElasticPool | None = None  # plain handlers: a thread per event in flight
        self._steps: ElasticPool | None = None  # async bots: only the inbox's statements run in threads
        self._governed_at, self._governed_cpu = self.clock(), self.cpu_clock()
        self._governed_handlers = self.handlers_cpu()
        self._sweeper: threading.Thread | None = None

    def _after_fork(self) -> None:
        super()._after_fork()
        self._reset()  # the parent's threads do not exist in the child

    @property
    def in_flight(self) -> int:
        """Events being handled now (running in a thread or awaiting on the loop)."""
        return self._in_flight

    def start(self) -> None:
        if self._pool is not None or self.stopping.is_set():
            return
        with self._lock:
            if self._pool is not None or self.stopping.is_set():
                return
            ensure_file_limit(self.max_concurrency)
            ensure_gc_threshold(self.gc_threshold)
            aio.lower_priority(self.nice)
            self._pool = ElasticPool(self.max_concurrency, "ampalibe", nice=self.nice)
            self._steps = ElasticPool(STEP_THREADS, "ampalibe-steps", nice=self.nice)
            self._sweeper = threading.Thread(target=self._upkeep, name="ampalibe-sweeper", daemon=True)
            self._sweeper.start()

    def notify(self, users: Iterable[str]) -> None:
        self.start()
        with self._lock:
            if self._pool is None or self.stopping.is_set():
                return  # recorded; another worker (or the next start) handles it
            for user_id in users:
                if user_id in self._active:
                    if user_id not in self._queued_fresh:
                        self._active[user_id] = True
                    continue
                self._active[user_id] = False
                self._queued_fresh.add(user_id)
                self._waiting.append((user_id, None))
            self._fill()

    def handlers_cpu(self) -> float:
        """CPU seconds this process's handlers used so far: the work its threads finished (each
        slot's, as it ends) and its ``async def`` work (:func:`flask_ampalibe.aio.cpu_seconds`)."""
        return sum(pool.cpu_seconds for pool in (self._pool, self._steps) if pool is not None) + aio.cpu_seconds()

    def _govern(self) -> None:
        """Adjust :attr:`limit` to the CPU use (lock held; at most every GOVERN_EVERY s).

        Handlers that wait (on an API, a sleep) use little CPU: the limit doubles up to
        ``max_concurrency`` while users wait for a slot.  Handlers that compute saturate the
        process (one core for Python code, the GIL): more of them at once would not go faster,
        only starve the webhook's threads of the GIL and slow the ack, so the limit drops to a
        bit below what is running.  Which of the two it is, the handlers' own CPU says: a process
        saturated by the webhook's acks while its handlers wait keeps admitting them.
        """
        now = self.clock()
        span = now - self._governed_at
        if span < GOVERN_EVERY:
            return
        cpu, handlers = self.cpu_clock(), self.handlers_cpu()
        busy = (cpu - self._governed_cpu) / span
        computing = (handlers - self._governed_handlers) / span
        self._governed_at, self._governed_cpu, self._governed_handlers = now, cpu, handlers
        floor = min(self.max_concurrency, GOVERN_FLOOR)
        if busy > CPU_HIGH and computing >= HANDLERS_HIGH and self._in_flight > floor:
            self.limit = max(floor, min(self.limit, self._in_flight) * 3 // 4)
        elif (busy < CPU_LOW or computing < HANDLERS_HIGH / 2) and self._waiting:
            self.limit = min(self.max_concurrency, max(floor, self.limit * 2))

    def _fill(self) -> None:
        """Start waiting work while slots are free (lock held)."""
        pool = self._steps if getattr(self.handle, "wants_loop", False) else self._pool
        if self.govern:
            self._govern()
        while self._waiting and self._in_flight < self.limit and pool is not None:
            user_id, claimed = self._waiting.popleft()
            self._queued_fresh.discard(user_id)
            self._in_flight += 1
            if self._in_flight > self.peak_in_flight:
                self.peak_in_flight = self._in_flight
            try:
                pool.submit(self._run, user_id, claimed)
            except RuntimeError:  # the pool is closed (shutdown) or not even its starter thread can start
                self._in_flight -= 1
                self._active.pop(user_id, None)
                logger.warning("not handling events of user %s here now; they stay recorded", user_id)

    def _run(self, user_id: str, claimed: Claimed | None) -> None:
        """One slot's work, in a pool thread: begin (or resume) the user, handle events until done,
        the user yields the slot, or an async event goes to the loop."""
        self._turns[user_id] = time.monotonic()
        try:
            if claimed is None:
                claimed = self.begin(user_id)
            elif self.stopping.is_set():  # resumed from the queue after shutdown began
                self.putback(user_id, claimed)
                claimed = None
            self._handle_from(user_id, claimed)
        except Exception as exc:
            self._failed(user_id, exc)
            self._end(user_id)

    def _failed(self, user_id: str, exc: Exception) -> None:
        if is_unavailable(exc):  # an outage: reported once (dberrors.Outage), not per user
            outage_for(self.inbox.engine).failed(exc)
        else:
            logger.error("could not handle events of user %s; they stay recorded and will be retried", user_id,
                         exc_info=exc)

    def _handle_from(self, user_id: str, claimed: Claimed | None) -> None:
        while claimed is not None:
            if getattr(self.handle, "wants_loop", False):
                self._to_loop(user_id, claimed)
                return  # the slot stays taken until the coroutine is done
            error = self._handle(claimed)
            if user_id in self._giving_up:
                self._give_up(user_id, claimed, error)
                return
            claimed = self.advance(user_id, claimed, error)
            if claimed is not None and self._turn_over(user_id):
                self._yield(user_id, claimed)
                return
        self._end(user_id)

    def _give_up(self, user_id: str, finished: Claimed, error: BaseException | None) -> None:
        """Finish ``finished`` and give the user's lease back without taking their next event: a
        worker that asked for work (or this one's next sweep) takes them up."""
        try:
            self.set_aside(user_id, finished, error)
        finally:
            self._end(user_id, drop=True)

    def _turn_over(self, user_id: str) -> bool:
        """Whether the user gives up their slot before their next event: others wait for one,
        and their turn has lasted :attr:`turn_seconds`."""
        return (bool(self._waiting) and not self.stopping.is_set()
                and time.monotonic() - self._turns.get(user_id, 0.0) >= self.turn_seconds)

    def _yield(self, user_id: str, claimed: Claimed) -> None:
        """The user goes to the back of the queue with their next event (its lease held)."""
        with self._lock:
            self._turns.pop(user_id, None)
            self._waiting.append((user_id, claimed))
            self._in_flight -= 1
            self._fill()

    def _to_loop(self, user_id: str, claimed: Claimed) -> None:
        future = aio.submit(self.handle.run_async(claimed))  # type: ignore[attr-defined]

        def done(fut: Future[BaseException | None]) -> None:
            try:
                error = fut.result()
            except BaseException as exc:  # not the handler's (the dispatcher catches those): ours
                logger.error("event %s of user %s could not be handled", claimed.event.key, user_id, exc_info=exc)
                error = exc
            try:
                self._steps.submit(self._resume, user_id, claimed, error)  # type: ignore[union-attr]
            except (RuntimeError, AttributeError):  # the pool is closed: shutdown timed out
                logger.warning("event %s of user %s finished after shutdown; it will be handled again",
                               claimed.event.key, user_id)
                if claimed.unit is not None:  # its state changes go with it
                    self.inbox.store.close_unit(claimed.unit)

        future.add_done_callback(done)

    def _resume(self, user_id: str, finished: Claimed, error: BaseException | None) -> None:
        try:
            if user_id in self._giving_up:
                self._give_up(user_id, finished, error)
                return
            claimed = self.advance(user_id, finished, error)
            if claimed is not None and self._turn_over(user_id):
                self._yield(user_id, claimed)
                return
            self._handle_from(user_id, claimed)
        except Exception as exc:
            self._failed(user_id, exc)
            self._end(user_id)

    def _end(self, user_id: str, drop: bool = False) -> None:
        """The user's slot is free: requeue them if they were notified meanwhile (unless ``drop``:
        given up to another worker)."""
        with self._lock:
            self._turns.pop(user_id, None)
            self._giving_up.discard(user_id)
            if self._active.get(user_id) and not drop and not self.stopping.is_set():
                self._active[user_id] = False
                self._queued_fresh.add(user_id)
                self._waiting.append((user_id, None))
            else:
                self._active.pop(user_id, None)
            self._in_flight -= 1
            self._fill()
            if self._in_flight <= 0:
                self._done.notify_all()

    def leased_users(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def room(self) -> int:
        with self._lock:  # free slots, and nothing queued here to fill them first
            return 0 if self._waiting else max(0, self.limit - self._in_flight)

    def idle(self) -> bool:
        with self._lock:
            return self._pool is not None and self._in_flight == 0 and not self._waiting

    def balance(self) -> int:
        """Answer a request for work (:meth:`Inbox.want_work <flask_ampalibe.inbox.Inbox.want_work>`)
        from another worker, made since the last one answered and within two ``poll_seconds``:
        half the users this executor is handling are given up after their current event (their
        lease given back, not queued here again), for that worker's sweeps to take up.  Returns
        how many."""
        if not self._active:
            return 0  # nobody to give (and no read of the request)
        wanted = self.inbox.wanted()
        if wanted is None:
            return 0
        at, owner = wanted
        if owner == self.owner or at <= self._balanced or self.inbox.clock() - at > 2 * self.poll_seconds:
            return 0
        self._balanced = at
        with self._lock:
            handling = [u for u in self._active if u not in self._queued_fresh and u not in self._giving_up]
            given = handling[:len(handling) // 2]
            self._giving_up.update(given)
        if given:
            logger.info("giving %s of %s users to a worker with nothing to do (%s)", len(given), len(handling), owner)
        return len(given)

    def tick(self) -> None:
        """Let the governor raise the limit again even when no handler ends (all of them wait)."""
        with self._lock:
            self._fill()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Finish running handlers (up to ``timeout`` s); unstarted events stay recorded for others.

        :returns: whether every handler finished in time.  Those still running keep their
            lease until it expires; their events are then handled again (``redelivered=True``).
        """
        self.stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            pool = self._pool
            if pool is None:
                return True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._queued_fresh.clear()
            for user_id, _ in waiting:
                self._active.pop(user_id, None)
        for user_id, claimed in waiting:  # a user who yielded their slot holds the lease and one event
            if claimed is not None:
                try:
                    self.putback(user_id, claimed)
                except Exception:
                    logger.exception("could not give back event %s of user %s; it is handled again after its lease",
                                     claimed.event.key, user_id)
        with self._lock:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._done.wait(left)
            running = self._in_flight
        pool.close()
        if self._steps is not None:
            self._steps.close()
        if running:
            logger.warning("%s bot handler(s) still running after %.1f s; their events will be handled again "
                           "once their lease expires", running, timeout)
        return not running
