"""@schedule jobs under a real gunicorn: each run time runs once, whatever the number of workers."""
from __future__ import annotations

from collections import Counter

from test_delivery import make_project, markers, served, wait_until  # noqa: F401  (served is a fixture)

#: Appended to the bot's core.py: each worker notes every scheduler tick it finished (its pid), so a
#: test waits for all workers' first ticks instead of sleeping and hoping they happened.
TICKS = '''

from flask_ampalibe.scheduler import Scheduler as _Scheduler

_tick = _Scheduler.tick


def _noted_tick(self, now=None, *, background=False):
    ran = _tick(self, now, background=background)
    mark("tick", "scheduler", ",".join(ran), False)
    return ran


_Scheduler.tick = _noted_tick
'''


def ticked(project, workers: int) -> bool:
    """Whether ``workers`` distinct processes finished a scheduler tick."""
    return len({m["pid"] for m in markers(project) if m["phase"] == "tick"}) >= workers


JOB = '''

@ampalibe.schedule("* * * * *")
def every_minute(when):
    mark("job", "scheduler", when.isoformat(), False)
'''


def test_each_slot_runs_once_across_three_workers(served, tmp_path):
    project = make_project(tmp_path / "scheduled")
    with open(project / "core.py", "a", encoding="utf-8") as core:
        core.write(TICKS + JOB)
    server = served(project, AMP_WORKERS="3")
    # No webhook is posted (only the startup check's GET): each worker's scheduler ticks as it
    # starts, and the current minute's run time is within grace, so all three compete for it.
    wait_until(lambda: [m for m in markers(project) if m["phase"] == "job"], 20, "the job to run")
    # The other workers' first ticks must lose the claim: wait until all three ticked, then count.
    wait_until(lambda: ticked(project, 3), 20, "the three workers' first scheduler ticks")
    runs = Counter(m["cmd"] for m in markers(project) if m["phase"] == "job")
    assert runs and set(runs.values()) == {1}, runs
    assert len(server.booted()) == 3


ASYNC_JOB = '''

@ampalibe.crontab("* * * * *")
async def every_minute_async(when):
    await asyncio.sleep(0.01)
    user = await ampalibe.offload(lambda: "scheduler")
    mark("async job", user, when.isoformat(), False)
'''


def test_an_async_job_runs_once_per_slot_on_the_workers_loop(served, tmp_path):
    project = make_project(tmp_path / "scheduled_async")
    with open(project / "core.py", "a", encoding="utf-8") as core:
        core.write(TICKS + ASYNC_JOB)
    served(project, AMP_WORKERS="2")
    wait_until(lambda: [m for m in markers(project) if m["phase"] == "async job"], 20, "the async job to run")
    wait_until(lambda: ticked(project, 2), 20, "both workers' first scheduler ticks")  # the other one lost
    runs = Counter(m["cmd"] for m in markers(project) if m["phase"] == "async job")
    assert runs and set(runs.values()) == {1}, runs
