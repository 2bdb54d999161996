"""``async def`` support: the process's event loop, offloading blocking work, the loop watchdog.

Every process that runs ``async def`` bot code (handlers, middleware, error hooks, scheduled
jobs) gets one asyncio event loop, in a daemon thread named ``ampalibe-loop``, created on first
use (never at import, and again in a forked child).  Coroutines of different users wait on it
together: a thousand handlers awaiting an LLM API cost a thousand small coroutine frames, not a
thousand threads.

Blocking work never belongs on the loop.  The library itself runs database statements and
plain ``def`` functions in threads (:func:`offload`), and ``bot.chat.aio`` is the Messenger
client with every method awaitable (each call runs in a thread).  A handler that blocks anyway
(``time.sleep``, ``requests`` without ``aio``) stops every coroutine of the loop while it blocks:
the **watchdog** notices a loop that has not run its heartbeat for :data:`BLOCKED_AFTER` seconds,
logs a warning with the stack of the blocking code, and sends new work to a fresh loop; the
blocked loop finishes its own coroutines when it wakes up, then stops.  So one bad handler
delays the coroutines that were sharing its loop, never the ones that come after.

Names bot code may use: :func:`offload` (``await ampalibe.offload(func, *args)``) and
:func:`run` (run a coroutine from plain code and wait for its result).
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from . import priority
from .engine import background_writes

__all__ = ["offload", "run", "submit", "is_async", "loop_stats", "BLOCKED_AFTER", "AsyncProxy"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds without a heartbeat after which a loop counts as blocked (new work goes elsewhere).
BLOCKED_AFTER = 1.0
#: How often the loop beats, and the watchdog looks.
_BEAT = 0.1
#: Threads kept for :func:`offload` at most (one per blocking call in flight).
OFFLOAD_THREADS = 1024


def is_async(func: Any) -> bool:
    """Whether calling ``func`` gives a coroutine (``async def``, also behind ``functools.partial``)."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


# -- a small elastic pool of threads for blocking work ---------------------------------------------------
class ElasticPool:
    """Threads that start when work waits and no thread is idle, and end after ``idle_seconds`` idle.

    Unlike :class:`concurrent.futures.ThreadPoolExecutor` it shrinks when the load goes, so
    ``max_threads`` can be large: it is a ceiling, not a cost.

    :meth:`submit` never waits for a thread to start: starting one waits until the new thread
    first gets the GIL, which takes long when hundreds of handler threads want it, and callers
    submit with locks held (the executor's, which the webhook's ``notify`` needs).  New threads
    are started by the pool's starter thread instead.

    :param max_threads: threads at most; work beyond waits in a FIFO queue.
    :param nice: how much lower than the process's the CPU priority of the pool's threads is
        (see :mod:`flask_ampalibe.priority`).
    """

    def __init__(self, max_threads: int, name: str, idle_seconds: float = 10.0, nice: int = 0) -> None:
        self.max_threads = max(1, int(max_threads))
        self.name = name
        self.nice = nice
        self.idle_seconds = idle_seconds
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # workers wait here for work
        self._starter_cv = threading.Condition(lock)  # the starter waits here for threads to start
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._threads = 0  # running, or counted and about to be started by the starter
        self._to_start = 0
        self._starter: threading.Thread | None = None
        self._idle = 0
        self._busy = 0
        self._closed = False
        self._serial = 0
        #: The most threads this pool ran at once (for tests and the bench).
        self.peak_threads = 0
        #: CPU seconds its threads spent in the work they finished (the executor's CPU governor).
        self.cpu_seconds = 0.0

    def submit(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in a thread of the pool (exceptions are logged)."""
        with self._cv:
            if self._closed:
                raise RuntimeError(f"the {self.name} pool is closed")
            self._queue.append((func, args))
            if len(self._queue) <= self._idle:
                self._cv.notify()
            elif self._threads < self.max_threads:
                self._threads += 1
                self.peak_threads = max(self.peak_threads, self._threads)
                self._to_start += 1
                if self._starter is None:  # once per pool: the only start submit waits for
                    starter = threading.Thread(target=self._start_threads, name=f"{self.name}-starter", daemon=True)
                    try:
                        starter.start()
                    except RuntimeError:  # no thread can start: the caller keeps its work
                        self._threads -= 1
                        self._to_start -= 1
                        self._queue.pop()
                        raise
                    self._starter = starter
                self._starter_cv.notify()

    def _start_threads(self) -> None:
        """The starter thread: start the threads :meth:`submit` counted, until the pool closes."""
        while True:
            with self._cv:
                while not self._to_start and not self._closed:
                    self._starter_cv.wait()
                if self._closed:
                    self._threads -= self._to_start
                    self._to_start = 0
                    return
                self._to_start -= 1
                self._serial += 1
                name = f"{self.name}-{self._serial}"
            try:
                threading.Thread(target=self._work, name=name, daemon=True).start()
            except RuntimeError:  # can't start new thread (limits): the running ones take the work
                with self._cv:
                    self._threads -= 1
                    stuck = self._threads == 0 and bool(self._queue)
                    if stuck:  # nobody to take it: try again in a moment
                        self._threads += 1
                        self._to_start += 1
                logger.warning("%s: cannot start another thread now%s", self.name,
                               "; retrying in 1 s" if stuck else "")
                if stuck:
                    time.sleep(1.0)

    @property
    def backlog(self) -> int:
        """Work waiting for a thread."""
        return len(self._queue)

    @property
    def threads(self) -> int:
        return self._threads

    def close(self) -> None:
        """Start nothing new; waiting work is dropped, idle threads end."""
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()
            self._starter_cv.notify_all()

    def _work(self) -> None:
        priority.lower(self.nice)
        while True:
            with self._cv:
                while not self._queue:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    woke = self._cv.wait(self.idle_seconds)
                    self._idle -= 1
                    if not woke and not self._queue:
                        self._threads -= 1
                        return
                func, args = self._queue.popleft()
                self._busy += 1
            started = time.thread_time()
            try:
                with background_writes():  # on SQLite the webhook's writes go first
                    func(*args)
            except BaseException:  # the pool must survive anything its work raises
                logger.exception("%s: unhandled error in %r", self.name, func)
            finally:
                used = time.thread_time() - started
                with self._cv:
                    self._busy -= 1
                    self.cpu_seconds += used
                del func, args  # an idle thread keeps nothing of its last work alive


# -- the loops -----------------------------------------------------------------------------------------
class _Loop:
    """One event loop in its own thread, with a heartbeat the watchdog reads."""

    def __init__(self, serial: int, nice: int = 0) -> None:
        self.nice = nice
        self.loop = asyncio.new_event_loop()
        self.beat = time.monotonic()
        self.blocked_since: float | None = None
        self.retired = False
        self.tasks = 0  # coroutines submitted and not finished
        self.cpu = 0.0  # CPU seconds of the loop's thread, as of its last heartbeat
        self.tasks_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"ampalibe-loop-{serial}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        priority.lower(self.nice)
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._heartbeat)
        try:
            self.loop.run_forever()
        finally:
            self.cpu = time.thread_time()
            self.loop.close()

    def _heartbeat(self) -> None:
        self.beat = time.monotonic()
        self.cpu = time.thread_time()
        if self.retired and self.tasks == 0:
            self.loop.stop()
            return
        self.loop.call_later(_BEAT, self._heartbeat)


class _Loops:
    """The process's loops: the current one takes new work; blocked ones are retired."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: How much lower than the process's the CPU priority of the loops' and the offload
        #: pool's threads is (the executor sets it: ``AMPALIBE_HANDLER_NICE``).
        self.nice = 0
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._current: _Loop | None = None
        self._all: list[_Loop] = []
        self._serial = 0
        self._watchdog: threading.Thread | None = None
        self._pool: ElasticPool | None = None
        self._pid = os.getpid()
        self.blocked_count = 0
        self.ended_cpu = 0.0  # CPU seconds of the loops whose threads ended

    def current(self) -> _Loop:
        if self._pid != os.getpid():  # a forked child: the parent's threads are not here
            self._reset()
        current = self._current
        if current is not None and not current.retired:
            return current
        with self._lock:
            if self._current is None or self._current.retired:
                self._serial += 1
                self._current = _Loop(self._serial, self.nice)
                self._all.append(self._current)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch, name="ampalibe-loop-watchdog", daemon=True)
                    self._watchdog.start()
            return self._current

    def pool(self) -> ElasticPool:
        if self._pid != os.getpid():
            self._reset()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ElasticPool(OFFLOAD_THREADS, "ampalibe-offload", nice=self.nice)
        return self._pool

    def _watch(self) -> None:
        while True:
            time.sleep(_BEAT)
            now = time.monotonic()
            with self._lock:
                loops = list(self._all)
            for lp in loops:
                if not lp.thread.is_alive():
                    with self._lock:
                        if lp in self._all:
                            self._all.remove(lp)
                            self.ended_cpu += lp.cpu
                    continue
                late = now - lp.beat
                if late > BLOCKED_AFTER and lp.blocked_since is None:
                    if sys.is_finalizing() or _waiting_for_io(lp):
                        continue  # late only for want of the GIL (a busy process, exiting): not blocked
                    lp.blocked_since = now
                    with self._lock:
                        lp.retired = True  # new work goes to a fresh loop from now on
                    self.blocked_count += 1
                    frame = sys._current_frames().get(lp.thread.ident or -1)
                    where = "".join(traceback.format_stack(frame)[-6:]) if frame is not None else "?"
                    logger.warning(
                        "the asyncio loop %s has been blocked for %.1f s by code that does not await (a plain "
                        "blocking call inside an async def?); its %d coroutine(s) wait, new work goes to a new "
                        "loop. Run blocking calls with `await ampalibe.offload(func, ...)` or use bot.chat.aio. "
                        "Blocking here:\n%s", lp.thread.name, late, lp.tasks, where)
                elif late <= BLOCKED_AFTER and lp.blocked_since is not None:
                    logger.info("the asyncio loop %s runs again after %.1f s; it stops once its coroutines are done",
                                lp.thread.name, now - lp.blocked_since)
                    lp.blocked_since = None


def _waiting_for_io(lp: _Loop) -> bool:
    """Whether the loop's thread sits in its selector (idle), rather than in a coroutine's code."""
    frame = sys._current_frames().get(lp.thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_filename.endswith("selectors.py"):
            return True
        frame = frame.f_back
    return False


_loops = _Loops()


def submit(coro: Coroutine[Any, Any, T]) -> "Future[T]":
    """Schedule ``coro`` on the process's loop; returns a :class:`concurrent.futures.Future`."""
    lp = _loops.current()
    with lp.tasks_lock:
        lp.tasks += 1
    future = asyncio.run_coroutine_threadsafe(coro, lp.loop)

    def done(_: Any) -> None:
        with lp.tasks_lock:
            lp.tasks -= 1

    future.add_done_callback(done)
    return future


def run(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Run a coroutine on the process's loop and wait for its result (from plain, non-async code).

    :raises RuntimeError: when called from a coroutine of that loop (``await`` it instead).
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None:
        close = getattr(awaitable, "close", None)
        if callable(close):
            close()  # it will never run: no "was never awaited" warning on top of this error
        raise RuntimeError("ampalibe.aio.run() was called inside a running event loop; `await` the coroutine instead.")

    async def wrap() -> T:
        return await awaitable

    return submit(wrap()).result(timeout)


def offload(func: Callable[..., T], *args: Any, **kwargs: Any) -> "asyncio.Future[T]":
    """Run the blocking ``func(*args, **kwargs)`` in a thread; await the result.

    Like :func:`asyncio.to_thread` (the caller's context variables, e.g. Flask's app context,
    go with it), but on the library's elastic pool, which grows with the calls in flight
    instead of stopping at ``min(32, cpus + 4)`` threads.

    Example::

        @ampalibe.command("/weather")
        async def weather(sender_id, **extends):
            report = await ampalibe.offload(requests.get, URL, timeout=10)
            await bot.chat.aio.send_text(sender_id, report.text)
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def call() -> None:
        try:
            result = ctx.run(func, *args, **kwargs)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_set, future, None, exc)
        else:
            loop.call_soon_threadsafe(_set, future, result, None)

    _loops.pool().submit(call)
    return future


def _set(future: "asyncio.Future[Any]", result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def lower_priority(nice: int) -> None:
    """Run the coroutines of this process (loops started from now on) and the blocking calls
    they offload ``nice`` lower than the process's CPU priority (see :mod:`flask_ampalibe.priority`).

    The loops are the process's, so with several apps the executor started last sets it."""
    _loops.nice = nice


def cpu_seconds() -> float:
    """CPU seconds this process's ``async def`` work used so far: its loops' threads (as of their
    last heartbeat, every 0.1 s) and the calls :func:`offload` finished (the CPU governor's
    measure of async handlers; only differences between two readings mean anything)."""
    if _loops._pid != os.getpid():
        return 0.0
    with _loops._lock:
        loops = sum(lp.cpu for lp in _loops._all) + _loops.ended_cpu
    pool = _loops._pool
    return loops + (pool.cpu_seconds if pool is not None else 0.0)


def loop_stats() -> dict[str, int]:
    """Loops alive, blockages seen, offload threads (for operators and tests)."""
    pool = _loops._pool
    return {"loops": len(_loops._all), "blocked": _loops.blocked_count,
            "offload_threads": pool.threads if pool is not None else 0,
            "offload_peak": pool.peak_threads if pool is not None else 0}


class AsyncProxy:
    """Every method of ``target`` as an awaitable that runs the blocking call in a thread.

    ``bot.chat.aio`` is one: ``await bot.chat.aio.send_text(sender_id, "Hi")``.
    """

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await offload(attr, *args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"<async {self._target!r}>"
