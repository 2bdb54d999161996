"""@schedule jobs under a real gunicorn: each run time runs once, whatever the number of workers."""
from __future__ import annotations

import time
from collections import Counter

from test_delivery import make_project, markers, served, wait_until  # noqa: F401  (served is a fixture)

JOB = '''

@ampalibe.schedule("* * * * *")
def every_minute(when):
    mark("job", "scheduler", when.isoformat(), False)
'''


def test_each_slot_runs_once_across_three_workers(served, tmp_path):
    project = make_project(tmp_path / "scheduled")
    with open(project / "core.py", "a", encoding="utf-8") as core:
        core.write(JOB)
    server = served(project, AMP_WORKERS="3")
    # No webhook is posted (only the startup check's GET): each worker's scheduler ticks as it
    # starts, and the current minute's run time is within grace, so all three compete for it.
    wait_until(lambda: [m for m in markers(project) if m["phase"] == "job"], 20, "the job to run")
    time.sleep(1.5)  # let the other workers' first ticks happen: they must lose the claim
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
        core.write(ASYNC_JOB)
    served(project, AMP_WORKERS="2")
    wait_until(lambda: [m for m in markers(project) if m["phase"] == "async job"], 20, "the async job to run")
    time.sleep(1.5)  # the other worker's first tick must lose the claim
    runs = Counter(m["cmd"] for m in markers(project) if m["phase"] == "async job")
    assert runs and set(runs.values()) == {1}, runs
