"""Operating a bot: ``worker``, ``inbox stats|failed|rejected|replay|purge`` and ``db create|upgrade|status``.

These commands need the bot's app.  They find it, in this order: the app of the current Flask
CLI context; the one named by ``flask --app`` or ``FLASK_APP``; the ``core.py`` of the current
folder (see :mod:`flask_ampalibe.cli.loader`).  Importing the app starts nothing: the commands
only read and write the inbox tables, and ``worker`` starts its own handler threads.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo
from sqlalchemy.engine import make_url

from ..config import DEFAULT_MAX_CONCURRENCY
from . import loader
from .errors import remember_database
from .loader import ProjectError

__all__ = ["register", "worker", "inbox", "db", "load_state"]

#: Signals that stop ``ampalibe worker`` gracefully (a second one stops it at once).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def register(group: click.Group) -> None:
    """Attach the operational commands to ``group`` (the ``ampalibe`` group)."""
    for command in (worker, inbox, db):
        group.add_command(command)


def load_state() -> Any:
    """The :class:`~flask_ampalibe.state.AmpalibeState` of the bot these commands operate.

    :raises click.ClickException: when no app is found or it has no flask_ampalibe.
    """
    app = _load_app()
    state = app.extensions.get("ampalibe")
    if state is None:
        raise click.ClickException(
            f"The app {app.name!r} does not use flask_ampalibe: call ampalibe.init(Configuration()) "
            "in core.py, or Ampalibe(app) in your app module."
        )
    remember_database(state.database_url)
    return state


def _load_app() -> Flask:
    if current_app:
        return current_app._get_current_object()  # type: ignore[attr-defined]
    info = click.get_current_context().find_object(ScriptInfo)
    if info is not None and info.app_import_path:
        return info.load_app()
    if os.environ.get("FLASK_APP"):
        return ScriptInfo(app_import_path=os.environ["FLASK_APP"], set_debug_flag=False).load_app()
    try:
        return loader.load_app()
    except ProjectError as exc:
        raise ProjectError(f"{exc.format_message()} A Flask-native app can be named with FLASK_APP.") from None


def _where(state: Any) -> str:
    return make_url(state.database_url).render_as_string(hide_password=True)


# -- worker -----------------------------------------------------------------------------------
@click.command()
@click.option("--threads", type=click.IntRange(min=1),
              help=f"Events handled at once. Default: AMPALIBE_MAX_CONCURRENCY ({DEFAULT_MAX_CONCURRENCY}).")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds running handlers get to finish after SIGTERM or Ctrl-C.")
@click.option("--celery", "use_celery", is_flag=True,
              help="Run a Celery worker (AMPALIBE_EXECUTOR=celery): handle the tasks the webhook sends.")
@click.option("--pool", type=click.Choice(["threads", "prefork", "solo"]), default="threads", show_default=True,
              help="With --celery: Celery's pool; --threads sets its concurrency.")
def worker(threads: int | None, graceful_timeout: float, use_celery: bool, pool: str) -> None:
    """Handle the bot's recorded events in this process.

    For deployments whose web processes only record (AMPALIBE_EXECUTOR=worker).  Start as
    many workers, on as many hosts, as you like: they share the database, and each user's
    events are still handled one at a time, oldest first.

    With --celery (AMPALIBE_EXECUTOR=celery, AMP_EXECUTOR=celery in .env): a Celery worker
    that handles the tasks the webhook sends through AMPALIBE_CELERY_BROKER_URL, under the
    same per-user lease.

    SIGTERM or Ctrl-C: no new event is started, running handlers get --graceful-timeout
    seconds to finish, the rest stays recorded for the next worker.  A second signal stops
    at once (what was running is handled again later, with redelivered=True).
    """
    from ..executor import thread_executor
    from ..scheduler import scheduler_for

    state = load_state()
    settings = state.settings
    if use_celery:
        _celery_worker(state, threads or settings.max_concurrency, pool, graceful_timeout)
        return
    if not logging.getLogger().handlers:  # the library adds no handlers; this program shows its logs
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    executor = thread_executor(state.inbox, state.dispatcher, settings, threads=threads, fed_by_sweeps=True)
    state.store.create_all()
    # The signal handler only writes to a pipe: taking locks (Event.set) in a handler can
    # deadlock with the interrupted code, a pipe write cannot.
    wake_read, wake_write = os.pipe()

    def on_signal(signum: int, frame: Any) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.write(wake_write, b"!")

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    scheduler = scheduler_for(state)
    try:
        executor.start()
        scheduler.start()
        click.echo(f"ampalibe worker (pid {os.getpid()}): handling the events recorded in {_where(state)} "
                   f"with up to {executor.max_concurrency} events at once. Stop with Ctrl-C or SIGTERM.")
        os.read(wake_read, 1)
        click.echo(f"Stopping: waiting up to {graceful_timeout:g} s for running handlers "
                   "(signal again to stop at once).")
        deadline = time.monotonic() + graceful_timeout
        finished = executor.shutdown(graceful_timeout)
        scheduler.stop(max(0.0, deadline - time.monotonic()))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)
    if not finished:
        click.echo("Handlers still running were cut short; their events will be handled again "
                   f"(redelivered=True) once their lease ({settings.lease_seconds:g} s) expires.", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # a normal exit would wait for those handler threads
    click.echo("Stopped.")


def _celery_worker(state: Any, concurrency: int, pool: str, graceful_timeout: float) -> None:
    """``ampalibe worker --celery``: Celery's worker on the bot's Celery app, until stopped."""
    from ..celery_executor import QUEUE, CeleryExecutor

    executor = state.executor
    if not isinstance(executor, CeleryExecutor):
        raise click.ClickException(
            f"ampalibe worker --celery needs the Celery executor, and this bot's is {state.settings.executor!r}: "
            "set AMP_EXECUTOR=celery and AMP_CELERY_BROKER_URL=redis://... in .env "
            "(AMPALIBE_EXECUTOR / AMPALIBE_CELERY_BROKER_URL in a Flask config), the same for the web servers."
        )
    from celery import signals

    state.store.create_all()
    broker = executor.celery.connection_for_write().as_uri()  # the password masked

    stop_requested = threading.Event()  # SIGTERM, SIGINT, SIGQUIT: Celery is told to stop
    workers: list[Any] = []

    def on_shutting_down(**kwargs: Any) -> None:
        stop_requested.set()
        # Celery's warm shutdown waits for running tasks without limit: give them
        # --graceful-timeout seconds, then exit (their events run again, redelivered=True).
        def give_up() -> None:
            print(f"ampalibe worker: handlers still running after {graceful_timeout:g} s; exiting. Their events "
                  f"will be handled again (redelivered=True) once their lease ({state.settings.lease_seconds:g} s) "
                  "expires.", file=sys.stderr, flush=True)
            os._exit(1)

        timer = threading.Timer(graceful_timeout, give_up)
        timer.daemon = True
        timer.start()

    def quieter(**kwargs: Any) -> None:
        # Two INFO lines per task (received, succeeded) cost more than a hello handler; the
        # outcome of every event is in the inbox (`ampalibe inbox stats|failed`).
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)

    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    signals.after_setup_logger.connect(quieter, weak=False)
    signals.worker_init.connect(lambda sender=None, **kwargs: workers.append(sender), weak=False)
    click.echo(f"ampalibe worker --celery (pid {os.getpid()}): tasks from {broker} (queue {QUEUE}), events in "
               f"{_where(state)}, {pool} pool of {concurrency}. Stop with Ctrl-C or SIGTERM.")
    sys.stdout.flush()
    started = time.monotonic()
    executor.celery.worker_main([
        "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--queues={QUEUE}",
        f"--hostname=ampalibe-{os.getpid()}@%h", "--loglevel=INFO",
        # Not needed by the bot (no remote control, no worker-to-worker sync) and each costs
        # broker round trips; mingle also delays the start by a second.
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])
    exitcode = workers[-1].exitcode if workers else None
    if stop_requested.is_set() or not exitcode:
        sys.exit(exitcode or 0)
    _start_again(exitcode, time.monotonic() - started)


#: How many times in a row ``ampalibe worker --celery`` started Celery's worker again (kept
#: across the re-execution in the environment).
RESTARTS_VARIABLE = "AMPALIBE_CELERY_WORKER_RESTARTS"
#: A worker that ran this long before it stopped on an error starts again after 1 s.
RESTART_RESET_SECONDS = 60.0
RESTART_MAX_DELAY = 60.0


def _start_again(exitcode: int, ran: float) -> None:
    """Start this command again, in this process, after Celery's worker stopped on an error.

    Celery's worker stops for good on an error it does not expect ("Unrecoverable error" in
    its log), for instance on some broker connection losses while tasks run (Celery 5.7 and
    a Redis restart).  Nothing is lost (the events are in SQL), but nobody would handle them
    here any more.  So the command runs again, same pid and arguments, after a delay that
    doubles with each restart in a row (1 s, 2 s, ... up to a minute).  Handlers cut short
    run again with ``redelivered=True``.
    """
    restarts = 0 if ran >= RESTART_RESET_SECONDS else int(os.environ.get(RESTARTS_VARIABLE) or 0)
    delay = min(RESTART_MAX_DELAY, 2.0 ** restarts)
    print(f"ampalibe worker: Celery's worker stopped on an error (exit code {exitcode}, after {ran:.0f} s, see "
          f"above); starting it again in {delay:g} s. Stop with Ctrl-C or SIGTERM.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    for sig in STOP_SIGNALS:  # Celery's handlers are still installed: stop for real while waiting
        signal.signal(sig, signal.SIG_DFL)
    time.sleep(delay)
    os.environ[RESTARTS_VARIABLE] = str(restarts + 1)
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    os.execv(sys.executable, [sys.executable, *argv[1:]])


# -- inbox ------------------------------------------------------------------------------------
@click.group()
def inbox() -> None:
    """Look at and repair the webhook inbox (recorded events)."""


@inbox.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for monitoring).")
def stats(as_json: bool) -> None:
    """Counts of recorded events by status, and the age of the oldest unfinished one."""
    counts = load_state().inbox.stats()
    if as_json:
        click.echo(json.dumps(counts, sort_keys=True))
        return
    for key in ("received", "pending", "running", "done", "failed", "rejected"):
        click.echo(f"{key:<9} {counts[key]}")
    age = counts["oldest_pending_age"]
    click.echo(f"oldest unfinished event: {_age(age)} old" if age else "no unfinished event")


@inbox.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="How many to list.")
@click.option("--traceback", "full", is_flag=True, help="Show each error's whole traceback.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def failed(limit: int, full: bool, as_json: bool) -> None:
    """Failed events, newest first, with their error (replay them with `inbox replay`)."""
    rows = load_state().inbox.failed(limit)
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True, default=str))
        return
    if not rows:
        click.echo("No failed events.")
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["finished_at"])) if row["finished_at"] else "?"
        click.echo(f"#{row['id']}  {when}  user {row['user_id']}  {row['kind']}  "
                   f"attempts {row['attempts']}  key {row['event_key']}")
        error = (row["error"] or "").rstrip()
        lines = error.splitlines() if full else error.splitlines()[-1:]
        for line in lines:
            click.echo(f"    {line}")


@inbox.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="How many to list.")
@click.option("--body", "with_body", is_flag=True, help="Show each item as it was received.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rejected(limit: int, with_body: bool, as_json: bool) -> None:
    """Webhook items rejected at reception (not valid Messenger events), newest first, with the reason."""
    rows = load_state().inbox.rejected(limit)
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True, default=str))
        return
    if not rows:
        click.echo("No rejected items.")
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["received_at"]))
        click.echo(f"#{row['id']}  {when}  user {row['user_id'] or '?'}  {row['kind']}  {row['error']}")
        if with_body:
            click.echo(f"    {row['body']}")


@inbox.command()
@click.argument("event_id", type=int, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every failed event.")
def replay(event_id: int | None, replay_all: bool) -> None:
    """Put the failed event EVENT_ID (or --all of them) back in the queue, to be handled again."""
    if (event_id is None) == (not replay_all):
        raise click.UsageError("Give the id of one failed event (see `inbox failed`), or --all.")
    state = load_state()
    users = state.inbox.replay(None if replay_all else event_id)
    if not users:
        if replay_all:  # nothing to do is not an error (scripts and cron run --all blindly)
            click.echo("No failed events to replay.")
            return
        raise click.ClickException(f"No failed event has id {event_id}; `inbox failed` lists them.")
    click.echo(f"Back in the queue (users: {', '.join(users)}). The running bot, or `ampalibe worker`, "
               f"handles them within {state.settings.poll_seconds:g} s.")


@inbox.command()
@click.option("--days", type=click.FloatRange(min=0),
              help="Keep handled events this many days. Default: AMPALIBE_RETENTION_DAYS (7).")
def purge(days: float | None) -> None:
    """Delete handled events and rejected items older than the retention (failed ones are kept)."""
    state = load_state()
    days = state.settings.retention_days if days is None else days
    count = state.inbox.purge(days * 86400)
    click.echo(f"Deleted {count} handled event{'s' if count != 1 else ''} (or rejected item{'s' if count != 1 else ''}) "
               f"finished more than {days:g} days ago.")


# -- db ---------------------------------------------------------------------------------------
@click.group()
def db() -> None:
    """The bot's database."""


@db.command()
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when all is well (`ampalibe run` uses it).")
def create(quiet: bool) -> None:
    """Create the bot's tables in an empty database (also done on first use) and check the
    schema revision of an existing one."""
    state = load_state()
    state.store.create_all()
    if not quiet:
        click.echo(f"Tables ready in {_where(state)}.")


@db.command()
def upgrade() -> None:
    """Upgrade flask_ampalibe's tables to this release's schema (creates them when missing).

    Run it after installing a new flask_ampalibe when the bot says the database is behind.
    Data is kept.  A bot's own tables and its own Alembic version table are not touched.
    """
    from ..schema import upgrade as run_upgrade

    state = load_state()
    before, after = run_upgrade(state.store.engine)
    where = _where(state)
    if before.state == "current":
        click.echo(f"{where} is already at schema revision {after.revision} (the newest); nothing to do.")
    elif before.state == "empty":
        click.echo(f"Created flask_ampalibe's tables in {where} (schema revision {after.revision}).")
    else:
        was = before.revision or "from before migrations"
        click.echo(f"Upgraded {where} from schema revision {was} to {after.revision}.")


@db.command()
def status() -> None:
    """The schema revision of the database and the one this release needs (changes nothing)."""
    from ..schema import LEGACY_REVISION
    from ..schema import status as read_status

    state = load_state()
    found = read_status(state.store.engine)
    where = _where(state)
    legacy_behind = found.state == "legacy" and found.head != LEGACY_REVISION
    said = {
        "empty": f"{where} has no flask_ampalibe tables yet (they are created on first use, or by `db upgrade`).",
        "legacy": f"{where} has tables from before schema revisions (revision {LEGACY_REVISION}); "
                  + (f"this release needs {found.head}: run `ampalibe db upgrade`." if legacy_behind
                     else "they are recognised and stamped at the first start (or by `db upgrade`)."),
        "current": f"{where} is at schema revision {found.revision}, the newest.",
        "behind": f"{where} is at schema revision {found.revision}; this release needs {found.head}: "
                  "run `ampalibe db upgrade`.",
        "ahead": f"{where} is at schema revision {found.revision}, which this release does not know "
                 f"(newest: {found.head}): a newer flask_ampalibe wrote it.",
    }[found.state]
    click.echo(said)
    if found.state in ("behind", "ahead") or legacy_behind:
        sys.exit(1)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
