"""The Celery executor: handlers run in Celery workers, on any number of hosts.

``AMPALIBE_EXECUTOR=celery`` (``AMP_EXECUTOR=celery`` in a project's ``.env``) with
``AMPALIBE_CELERY_BROKER_URL`` (``AMP_CELERY_BROKER_URL``).  Install the extra:
``pip install 'flask_ampalibe[celery]'``.

The SQL inbox stays the source of truth; the broker only carries wake-ups:

1. The webhook records every event in the inbox and answers 200, as with any executor.
2. :meth:`CeleryExecutor.notify` hands the users it recorded to a publisher thread, which sends
   one task message per user (``flask_ampalibe.drain``, argument: the user id) to the broker.
   A broker that is down never slows or fails the webhook: the publish is given up and the
   sweeper (4.) sends it again later.
3. A Celery worker runs the task: the same claim-handle-release loop as the thread executor
   (:meth:`Executor.drain`) under the user's SQL lease.  Two tasks for one user never run that
   user's events at once or out of order: the second finds the lease taken and returns (the
   holder handles what was recorded meanwhile; see :meth:`Inbox.next_event`).
4. Every process with this executor (web workers and Celery workers) runs an upkeep thread: it
   renews the leases of the users it drains (a handler may run longer than the lease), purges old
   handled events, and *sweeps*: a user whose lease expired (the worker handling it died), or
   whose events waited ``AMPALIBE_CELERY_REQUEUE_SECONDS`` with nobody on them (a task lost
   with a broker restart, or never published), gets a new task.  So nothing depends on the
   broker alone; an event cut short by a dead worker runs again with ``redelivered=True``.

Celery settings relied on (set on the app :func:`make_celery` builds; see the README):

- ``task_acks_late`` and ``task_reject_on_worker_lost``: a task message is acknowledged when the
  task returns, and given back to the queue when the worker process running it dies, so the
  broker itself already re-delivers most lost wake-ups; the lease keeps a re-delivered task
  from running an event twice at once, and the sweeper covers what the broker loses.
- ``worker_prefetch_multiplier = 1``: a worker reserves one message per free slot, so a burst
  spreads over every worker and host, and a slow handler does not sit on other users' tasks.
- the Redis ``visibility_timeout`` (Celery's default, 1 h): a task unacknowledged that long is
  delivered again; harmless here (the second copy finds the lease held, or nothing to do).
- ``task_ignore_result``: there is no result backend; results live in the inbox.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .engine import background_writes
from .context import current_state
from .errors import ConfigurationError
from .executor.base import Executor, Handle
from .inbox import Inbox

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["CeleryExecutor", "TASK_NAME", "QUEUE", "CELERY_SETTINGS", "make_celery", "celery_app"]

logger = logging.getLogger(__name__)

#: The name of the task that drains one user's events.
TASK_NAME = "flask_ampalibe.drain"
#: The queue the webhook sends tasks to (and ``ampalibe worker --celery`` consumes).
QUEUE = "ampalibe"

#: The Celery settings this executor relies on (and why: see the module's docstring).
CELERY_SETTINGS: dict[str, Any] = {
    "task_default_queue": QUEUE,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "task_ignore_result": True,
    "task_serializer": "json",
    "accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
    # A running handler is not cut short when the broker connection drops: its work is in SQL,
    # and its message (if the broker lost it) is not needed any more.
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "broker_transport_options": {"visibility_timeout": 3600},
}

#: Publish attempts per message before giving it up to the sweeper (the webhook never waits).
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}

_worker_executors: "weakref.WeakSet[CeleryExecutor]" = weakref.WeakSet()


def _import_celery() -> Any:
    try:
        import celery
    except ImportError as exc:
        raise ConfigurationError(
            "AMPALIBE_EXECUTOR=celery needs Celery: pip install 'flask_ampalibe[celery]' "
            f"(it was not found: {exc})."
        ) from exc
    return celery


class CeleryExecutor(Executor):
    """Sends a task per notified user to Celery; Celery workers drain them under the SQL lease.

    :param broker_url: the broker (``redis://…``, ``amqp://…``).
    :param requeue_seconds: how long an unfinished event may wait, its user's lease free, before
        the sweeper sends its user a new task (tasks lost with the broker, or never sent).
    :param name: the Celery app's name (shown by ``celery inspect``).
    :param on_worker_ready: what a Celery worker process runs once ready; default: this
        executor's :meth:`start` (sweeper, lease renewal).  An app passes its state's ``start``,
        which also starts the ``@schedule`` jobs, so a Celery worker competes for their run times
        like a web worker.
    """

    def __init__(self, inbox: Inbox, handle: Handle, broker_url: str, requeue_seconds: float = 30.0,
                 name: str = "flask_ampalibe", on_worker_ready: Callable[[], None] | None = None,
                 **kwargs: float) -> None:
        super().__init__(inbox, handle, **kwargs)
        self.on_worker_ready = on_worker_ready or self.start
        self.broker_url = broker_url
        self.requeue_seconds = requeue_seconds
        self.celery = make_celery(self, name)
        self.task = self.celery.tasks[TASK_NAME]
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._outbox: dict[str, None] = {}  # users to send a task for, in order
        self._publishing = False
        self._active: dict[str, int] = {}  # users drained in this process -> how many tasks
        self._sent: dict[str, float] = {}  # user -> when the sweeper last sent them a task (monotonic)
        self._threads: list[threading.Thread] = []
        self._pid = 0

    def _after_fork(self) -> None:
        super()._after_fork()
        self._reset()

    # -- the web side ------------------------------------------------------------------------
    def notify(self, users: Iterable[str]) -> None:
        """Queue a task per user (sent by the publisher thread, after the webhook's answer)."""
        self.start()
        with self._lock:
            if self.stopping.is_set():
                return  # recorded: the sweeper of another process sends it
            for user_id in users:
                self._outbox[user_id] = None
            self._wake.notify()

    def publish(self, users: Iterable[str]) -> list[str]:
        """Send a task for each of ``users`` now; returns those that could not be sent.

        A failure is logged, never raised: the events are in the inbox, and the sweeper sends
        their users again once they have waited ``requeue_seconds``.
        """
        users = list(users)
        for index, user_id in enumerate(users):
            try:
                self.task.apply_async((user_id,), retry=True, retry_policy=PUBLISH_RETRY)
            except Exception as exc:  # kombu's connection errors, OSError, ...
                logger.warning("could not send the Celery task for %s user(s) (%s: %s); their events stay "
                               "recorded and are sent again within %.0f s", len(users) - index,
                               type(exc).__name__, exc, self.requeue_seconds)
                return users[index:]
        return []

    def _publish_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self.stopping.is_set():
                    self._wake.wait()
                if not self._outbox:
                    return  # stopping, and everything was sent
                batch = list(self._outbox)
                self._outbox.clear()
                self._publishing = True
            try:
                self.publish(batch)
            finally:
                with self._lock:
                    self._publishing = False
                    self._wake.notify_all()

    # -- the worker side ---------------------------------------------------------------------
    def run_task(self, user_id: str) -> int:
        """What the ``flask_ampalibe.drain`` task does: handle ``user_id``'s events, if no one else is.

        :returns: how many events this call handled.
        """
        self.start()
        if not self.inbox.has_work(user_id):
            # An earlier task of this user handled this one's event too: a read (no write lock,
            # no lease round trip) is enough.  An event recorded after this read has its own task.
            return 0
        with self._lock:
            self._active[user_id] = self._active.get(user_id, 0) + 1
        try:
            with background_writes():
                handled = self.drain(user_id)
        finally:
            with self._lock:
                left = self._active[user_id] - 1
                if left:
                    self._active[user_id] = left
                else:
                    del self._active[user_id]
        if self.stopping.is_set() and self.inbox.has_work(user_id):
            # The worker is stopping: drain stopped after the running event and gave the lease
            # back.  Hand the rest to another worker now rather than at the next sweep.
            self.publish([user_id])
        return handled

    # -- both --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start this process's publisher and upkeep threads (idempotent; again after a fork)."""
        if self._pid == os.getpid() or self.stopping.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._threads = [
                threading.Thread(target=self._publish_loop, name="ampalibe-celery-publisher", daemon=True),
                threading.Thread(target=self._upkeep, name="ampalibe-sweeper", daemon=True),
            ]
        for thread in self._threads:
            thread.start()

    def sweep(self) -> int:
        """Send a task for users nobody works on (lease expired, or waiting too long); returns how many."""
        now = time.monotonic()
        users = [u for u in self.inbox.stalled_users(self.requeue_seconds)
                 if now - self._sent.get(u, -1e18) >= self.requeue_seconds]
        if not users:
            return 0
        for user_id in users:
            self._sent[user_id] = now
        if len(self._sent) > 10000:  # forget old entries (they only space out re-sends)
            self._sent = {u: t for u, t in self._sent.items() if now - t < self.requeue_seconds}
        logger.info("sending Celery tasks again for %s user(s) whose events nobody is handling", len(users))
        failed = self.publish(users)
        for user_id in failed:
            self._sent.pop(user_id, None)
        return len(users) - len(failed)

    def leased_users(self) -> list[str]:
        with self._lock:
            return list(self._active)
    def shutdown(self, timeout: float = 30.0) -> bool:
        """Send what is queued (up to ``timeout`` s) and stop the threads.

        Handlers run in Celery workers, whose own warm shutdown waits for them.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self.stopping.set()
            self._wake.notify_all()
            threads = list(self._threads) if self._pid == os.getpid() else []
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)


def make_celery(executor: CeleryExecutor, name: str = "flask_ampalibe") -> "Celery":
    """A Celery app for ``executor``: its broker, :data:`CELERY_SETTINGS`, the drain task.

    Reach it as ``app.extensions["ampalibe"].executor.celery`` or with :func:`celery_app`, to
    change settings (``celery.conf.update(...)``) or to run ``celery -A module worker``.
    """
    celery = _import_celery()
    app = celery.Celery(name, set_as_current=False)
    app.conf.update(broker_url=executor.broker_url, **CELERY_SETTINGS)
    ref = weakref.ref(executor)

    # shared=False: a shared task would be added to every Celery app made after this one.
    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True, shared=False)
    def drain(user_id: str) -> int:
        target = ref()
        if target is None:  # pragma: no cover - the app was garbage collected
            return 0
        return target.run_task(str(user_id))

    _connect_worker_signals()
    _apps[id(app)] = ref
    return app


#: Celery app id -> its executor, for the worker signals (which name the app, not the executor).
_apps: dict[int, "weakref.ReferenceType[CeleryExecutor]"] = {}
_connected = False


def _executor_of(sender: Any) -> CeleryExecutor | None:
    app = getattr(sender, "app", None)
    ref = _apps.get(id(app)) if app is not None else None
    return ref() if ref is not None else None


def _connect_worker_signals() -> None:
    global _connected
    if _connected:
        return
    from celery import signals

    def on_ready(sender: Any = None, **kwargs: Any) -> None:
        executor = _executor_of(sender)
        if executor is None:
            return
        _worker_executors.add(executor)
        executor.on_worker_ready()

    def on_shutting_down(**kwargs: Any) -> None:
        # Warm shutdown: running drains stop after the event they are handling.
        for executor in list(_worker_executors):
            executor.stopping.set()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    _connected = True


def celery_app(app: Any = None) -> "Celery":
    """The Celery app of a Flask app with ``AMPALIBE_EXECUTOR=celery`` (default: the app
    :func:`flask_ampalibe.init` configured), for ``celery -A module worker``::

        # celery_worker.py
        from myapp import create_app
        import flask_ampalibe

        flask_app = create_app()
        celery = flask_ampalibe.celery_app(flask_app)

    then ``celery -A celery_worker worker --pool threads --concurrency 64``.

    :raises ConfigurationError: when the app's executor is not ``celery``.
    """
    state = current_state() if app is None else app.extensions.get("ampalibe")
    executor = getattr(state, "executor", None)
    if not isinstance(executor, CeleryExecutor):
        raise ConfigurationError(
            "This app does not use the Celery executor: set AMPALIBE_EXECUTOR=celery and "
            "AMPALIBE_CELERY_BROKER_URL (AMP_EXECUTOR / AMP_CELERY_BROKER_URL in a project's .env)."
        )
    return executor.celery
