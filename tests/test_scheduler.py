"""Scheduled jobs: cron expressions, and one run per slot across workers sharing a database."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from flask import Flask, current_app

import flask_ampalibe
from flask_ampalibe import RoutingError
from flask_ampalibe.scheduler import Cron, ScheduleError, jobs, schedule, scheduler_for, start_scheduler
from flask_ampalibe.tables import jobs as jobs_table
from flask_ampalibe.testing import BotTester

UTC = timezone.utc


def at(*args: int, tz=UTC) -> datetime:
    return datetime(*args, tzinfo=tz)


# -- cron expressions ------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, when, expected", [
    ("* * * * *", at(2024, 5, 6, 13, 37), True),
    ("*/5 * * * *", at(2024, 5, 6, 13, 35), True),
    ("*/5 * * * *", at(2024, 5, 6, 13, 36), False),
    ("0 9 * * 1-5", at(2024, 5, 6, 9, 0), True),  # a Monday
    ("0 9 * * 1-5", at(2024, 5, 5, 9, 0), False),  # a Sunday
    ("0 9 * * mon-fri", at(2024, 5, 10, 9, 0), True),
    ("0 0 * * 0", at(2024, 5, 5, 0, 0), True),
    ("0 0 * * 7", at(2024, 5, 5, 0, 0), True),  # 7 is Sunday too
    ("0 0 * * SUN", at(2024, 5, 5, 0, 0), True),
    ("15,45 8-18/2 * * *", at(2024, 5, 6, 10, 45), True),
    ("15,45 8-18/2 * * *", at(2024, 5, 6, 9, 45), False),
    ("0 12 1 jan,jul *", at(2024, 7, 1, 12, 0), True),
    ("30 4/6 * * *", at(2024, 7, 1, 16, 30), True),  # 4, 10, 16, 22
    ("30 4/6 * * *", at(2024, 7, 1, 12, 30), False),
    # Vixie cron: both day fields restricted -> either matches
    ("0 0 13 * 5", at(2024, 9, 13, 0, 0), True),
    ("0 0 13 * 5", at(2024, 9, 6, 0, 0), True),  # a Friday, not the 13th
    ("0 0 13 * 5", at(2024, 9, 7, 0, 0), False),
    ("0 0 */2 * 5", at(2024, 9, 6, 0, 0), False),  # '*/2' counts as unrestricted: both must match
    ("@hourly", at(2024, 9, 6, 3, 0), True),
    ("@daily", at(2024, 9, 6, 0, 0), True),
    ("@weekly", at(2024, 9, 8, 0, 0), True),
    ("@monthly", at(2024, 9, 1, 0, 0), True),
    ("@yearly", at(2025, 1, 1, 0, 0), True),
    ("@yearly", at(2025, 2, 1, 0, 0), False),
])
def test_cron_matches(expr, when, expected):
    assert Cron(expr).matches(when) is expected


@pytest.mark.parametrize("expr, after, expected", [
    ("*/5 * * * *", at(2024, 5, 6, 13, 37, 12), at(2024, 5, 6, 13, 40)),
    ("*/5 * * * *", at(2024, 5, 6, 13, 40), at(2024, 5, 6, 13, 45)),  # strictly after
    ("0 9 * * 1-5", at(2024, 5, 10, 9, 0), at(2024, 5, 13, 9, 0)),  # Friday -> Monday
    ("0 0 29 2 *", at(2024, 3, 1), at(2028, 2, 29)),
    ("0 0 31 * *", at(2024, 4, 1), at(2024, 5, 31)),
    ("59 23 31 12 *", at(2024, 1, 1), at(2024, 12, 31, 23, 59)),
])
def test_cron_next_after(expr, after, expected):
    assert Cron(expr).next_after(after) == expected


@pytest.mark.parametrize("expr, message", [
    ("* * * *", "5 fields"),
    ("* * * * * * *", "5 fields"), ("* * * *", "5 fields"),
    ("60 * * * *", "minute '60' is out of range"),
    ("* 24 * * *", "hour '24' is out of range"),
    ("* * 0 * *", "day of month '0' is out of range"),
    ("* * * 13 *", "month '13' is out of range"),
    ("* * * * 8", "day of week '8' is out of range"),
    ("*/0 * * * *", "step that is not a positive number"),
    ("5-1 * * * *", "runs backwards"),
    ("x * * * *", "is not a number"),
    ("* * * foo *", "not a number or a name"),
    ("1,,2 * * * *", "is not a number"),
    ("0 0 30 2 *", "never runs"),
])
def test_cron_errors_name_the_field(expr, message):
    with pytest.raises(ScheduleError, match=message):
        Cron(expr)


def test_time_zone_of_a_job(router):
    @schedule("0 9 * * *", tz="Indian/Antananarivo", router=router)
    def morning():
        pass

    (job,) = jobs(router)
    assert job.due_slot(at(2024, 5, 6, 6, 0, 30).timestamp()) == at(2024, 5, 6, 6, 0).timestamp() // 60
    assert job.due_slot(at(2024, 5, 6, 9, 0, 30).timestamp()) is None
    assert job.next_run(at(2024, 5, 6, 7, 0)) == datetime(2024, 5, 7, 9, 0, tzinfo=ZoneInfo("Indian/Antananarivo"))
    with pytest.raises(ScheduleError, match="time zone 'Mars/Olympus'"):
        schedule("* * * * *", tz="Mars/Olympus")


def test_a_missed_slot_runs_late_within_grace_only(router):
    schedule("0 * * * *", router=router, grace=120)(lambda: None)
    (job,) = jobs(router)
    hour = at(2024, 5, 6, 10, 0).timestamp()
    assert job.due_slot(hour + 5) == hour // 60
    assert job.due_slot(hour + 119) == hour // 60
    assert job.due_slot(hour + 121) is None


# -- registration ------------------------------------------------------------------------------------
def test_schedule_returns_the_function_and_names_it(router):
    def report():
        pass
    assert schedule("*/5 * * * *", router=router)(report) is report
    assert [j.name for j in jobs(router)] == [f"{__name__}.test_schedule_returns_the_function_and_names_it.<locals>.report"]


def test_two_functions_cannot_share_a_name(router):
    schedule("* * * * *", name="daily", router=router)(lambda: None)
    with pytest.raises(RoutingError, match=r"name='daily'\) is already used by .*<lambda>; .*other needs another name"):
        @schedule("* * * * *", name="daily", router=router)
        def other():
            pass


def test_module_level_schedule_uses_the_default_router(router):
    old = flask_ampalibe.set_default_router(router)
    try:
        @flask_ampalibe.schedule("*/5 * * * *", name="beat")
        def beat():
            pass
    finally:
        flask_ampalibe.set_default_router(old)
    assert [j.name for j in jobs(router)] == ["beat"]


# -- running once per slot -------------------------------------------------------------------------------
def make_worker(tmp_path, database_url, router, name):
    """A Flask app as one gunicorn worker would build it, on the shared database."""
    app = Flask(name, root_path=str(tmp_path), instance_path=str(tmp_path / f"i-{name}"))
    app.config.update(TESTING=True, AMPALIBE_ACCESS_TOKEN="t", AMPALIBE_APP_SECRET="s",
                      AMPALIBE_EXECUTOR="inline", AMPALIBE_DATABASE_URL=database_url,
                      AMPALIBE_GRAPH_URL="http://127.0.0.1:9")
    flask_ampalibe.Ampalibe(app, router=router)
    return app


def test_two_workers_run_a_slot_once(tmp_path, database_url, router):
    runs = []

    @schedule("*/5 * * * *", name="report", router=router)
    def report(when):
        runs.append((current_app.name, when))

    first = scheduler_for(make_worker(tmp_path, database_url, router, "w1"))
    second = scheduler_for(make_worker(tmp_path, database_url, router, "w2"))
    slot = at(2024, 5, 6, 10, 5)
    assert first.tick(slot + timedelta(seconds=0.2)) == ["report"]
    assert second.tick(slot + timedelta(seconds=1.5)) == []  # a second later, another host: already done
    assert first.tick(slot + timedelta(minutes=2)) == []  # same slot, still within grace
    assert second.tick(slot + timedelta(minutes=5)) == ["report"]  # the next slot
    assert runs == [("w1", slot), ("w2", slot + timedelta(minutes=5))]


def test_racing_workers_run_each_slot_exactly_once(tmp_path, database_url, router):
    runs = []
    lock = threading.Lock()

    @schedule("* * * * *", name="tick", router=router)
    def tick(when):
        with lock:
            runs.append(when)

    workers = [scheduler_for(make_worker(tmp_path, database_url, router, f"w{i}")) for i in range(2)]
    contenders = [w for w in workers for _ in range(3)]  # 2 processes x 3 threads each
    slots = [at(2024, 5, 6, 10, m) for m in range(4)]
    barrier = threading.Barrier(len(contenders))
    failures = []

    def contend(scheduler):
        try:
            for slot in slots:
                barrier.wait(timeout=30)
                scheduler.tick(slot + timedelta(seconds=1))
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=contend, args=(s,)) for s in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert sorted(runs) == slots
    with workers[0].store.engine.connect() as conn:
        row = conn.execute(jobs_table.select()).one()
    assert row.name == "tick" and row.slot == slots[-1].timestamp() // 60 and row.owner


def test_a_failing_job_is_logged_and_not_retried(tmp_path, router, caplog):
    calls = []

    @schedule("* * * * *", name="flaky", router=router)
    def flaky(when):
        calls.append(when)
        raise RuntimeError("Graph is down")

    scheduler = scheduler_for(make_worker(tmp_path, f"sqlite:///{tmp_path / 'j.db'}", router, "w"))
    slot = at(2024, 5, 6, 10, 0)
    assert scheduler.tick(slot) == ["flaky"]
    assert scheduler.tick(slot + timedelta(seconds=30)) == []
    assert scheduler.tick(slot + timedelta(minutes=1)) == ["flaky"]
    assert len(calls) == 2
    assert "scheduled job flaky" in caplog.text and "Graph is down" in caplog.text


def test_tick_wants_an_aware_time(tmp_path, router):
    scheduler = scheduler_for(make_worker(tmp_path, f"sqlite:///{tmp_path / 'j.db'}", router, "w"))
    with pytest.raises(ScheduleError, match="aware datetime"):
        scheduler.tick(datetime(2024, 5, 6, 10, 0))


# -- proactive sends and the BotTester ---------------------------------------------------------------
def test_a_job_sends_to_users_outside_any_webhook(app, ext, graph, tmp_path):
    (tmp_path / "langs.json").write_text('{"news": {"en": "News of {day}", "fr": "Nouvelles du {day}"}}')
    bot = BotTester(app, graph, "8008")
    bot.send("/subscribe")  # any message records the user
    bot.query.set_lang("8008", "fr")
    bot.query.set_lang("9009", "en")

    @schedule("0 8 * * *", name="news", router=ext.router)
    def news(when):
        for user in ("8008", "9009"):
            lang = ext.query.get_lang(user)
            ext.chat.send_text(user, flask_ampalibe.translate("news", lang, day=f"{when:%d/%m}"))

    assert bot.run_jobs(at(2024, 5, 6, 8, 0, 3)) == ["news"]
    bot.assert_replied("Nouvelles du 06/05")
    bot.assert_replied("News of 06/05", user="9009")
    assert bot.run_jobs(at(2024, 5, 6, 8, 1)) == []


# -- the scheduler thread ----------------------------------------------------------------------------
def test_scheduler_threads_of_two_workers_run_a_slot_once(tmp_path, router):
    ran = []

    @schedule("* * * * *", name="minutely", router=router)
    def minutely(when):
        ran.append((current_app.name, when))

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    schedulers = [scheduler_for(make_worker(tmp_path, url, router, f"w{i}")) for i in range(2)]
    for s in schedulers:
        s.store.ensure()
    # Both clocks read 0.5 s before a minute starts, so the threads meet at the next slot at once.
    base = time.time()
    offset = (60 - base % 60) - 0.5
    ticks = [0, 0]  # finished ticks per thread: the test waits for them, not for a fixed sleep
    for i, s in enumerate(schedulers):
        s.clock = lambda: time.time() + offset

        def counted(now=None, *, background=False, tick=s.tick, i=i):
            try:
                return tick(now, background=background)
            finally:
                ticks[i] += 1

        s.tick = counted  # type: ignore[method-assign]
        assert s.start() is True
        assert s.start() is True  # idempotent
    try:
        # Two ticks each (at start, then as the next minute starts): every claim has been decided,
        # and no third tick comes before the minute after.
        deadline = time.monotonic() + 10
        while min(ticks) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert min(ticks) >= 2, ticks
    finally:
        for s in schedulers:
            s.stop(timeout=5)  # waits for the jobs the threads started
    # At start each thread ticks at once: the current minute (still within grace) runs; then the
    # next minute runs when it starts.  Each slot ran once, in one of the two workers.
    current = datetime.fromtimestamp((base + offset) // 60 * 60, UTC)
    assert sorted(when for _, when in ran) == [current, current + timedelta(minutes=1)]
    assert all(not s._thread.is_alive() for s in schedulers)


def test_the_thread_starts_on_the_first_request_outside_testing(tmp_path, router):
    schedule("0 0 1 1 *", name="new-year", router=router)(lambda: None)
    app = make_worker(tmp_path, f"sqlite:///{tmp_path / 'j.db'}", router, "served")
    scheduler = scheduler_for(app)
    app.test_client().get("/")
    assert scheduler._thread is None  # testing mode: tests tick by hand
    app.testing = False
    try:
        app.test_client().get("/")
        assert scheduler._thread is not None and scheduler._thread.is_alive()
    finally:
        scheduler.stop(timeout=5)


def test_start_without_jobs_starts_nothing(app, ext):
    assert start_scheduler(app) is False
    assert scheduler_for(app)._thread is None


# -- Ampalibe 1.1.9's crontab (aiocron): func=, start=, args=, a seconds field -----------------------------
@pytest.mark.parametrize("expr, when, expected", [
    ("* * * * * */10", at(2024, 5, 6, 13, 37, 20), True),
    ("* * * * * */10", at(2024, 5, 6, 13, 37, 21), False),
    ("0 9 * * * 30", at(2024, 5, 6, 9, 0, 30), True),
    ("0 9 * * * 30", at(2024, 5, 6, 9, 0, 0), False),
])
def test_a_sixth_field_gives_the_seconds(expr, when, expected):
    assert Cron(expr).matches(when) is expected


def test_next_run_of_a_seconds_spec():
    cron = Cron("*/2 * * * * 15,45")
    assert cron.next_after(at(2024, 5, 6, 13, 36, 20)) == at(2024, 5, 6, 13, 36, 45)
    assert cron.next_after(at(2024, 5, 6, 13, 36, 45)) == at(2024, 5, 6, 13, 38, 15)
    with pytest.raises(ScheduleError, match="second '61' is out of range"):
        Cron("* * * * * 61")


def test_crontab_with_func_and_seconds_runs_each_matching_second_once(tmp_path, router):
    runs = []

    def tick(when):
        runs.append(when)
    assert flask_ampalibe.crontab("* * * * * */20", func=tick, router=router) is tick
    scheduler = scheduler_for(make_worker(tmp_path, f"sqlite:///{tmp_path / 'j.db'}", router, "w1"))
    start = at(2024, 5, 6, 13, 0, 0).timestamp()
    for second in range(0, 61):
        scheduler.tick(start + second)
    assert runs == [at(2024, 5, 6, 13, 0, s) for s in (0, 20, 40)] + [at(2024, 5, 6, 13, 1, 0)]


def test_crontab_start_false_waits_for_start_and_args_are_passed(tmp_path, router):
    runs = []

    @flask_ampalibe.crontab("* * * * *", start=False, args=("news",), router=router)
    def send(what):
        runs.append(what)
    scheduler = scheduler_for(make_worker(tmp_path, f"sqlite:///{tmp_path / 'j.db'}", router, "w1"))
    minute = at(2024, 5, 6, 13, 0).timestamp()
    assert scheduler.tick(minute) == [] and runs == []
    send.start()
    assert scheduler.tick(minute + 60) and runs == ["news"]
    send.stop()
    assert scheduler.tick(minute + 120) == [] and runs == ["news"]
