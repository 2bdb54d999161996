"""GroupCommit: concurrent callers share a write; a cap bounds how many items one write carries."""
from __future__ import annotations

import threading
import time

from flask_ampalibe.groupcommit import GroupCommit


def _wait_for(predicate, what):
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _run_queued(commit, release, items):
    """Submit items[0] (its write blocks until ``release``), then the others while it writes."""
    results, threads = {}, []

    def submit(item):
        results[item] = commit.submit(item)

    threads.append(threading.Thread(target=submit, args=(items[0],)))
    threads[0].start()
    _wait_for(lambda: commit.writes == 1, "the first write to start")
    for item in items[1:]:
        threads.append(threading.Thread(target=submit, args=(item,)))
        threads[-1].start()
        _wait_for(lambda: commit.queued == len(threads) - 1, "the callers to queue")
    release.set()
    for t in threads:
        t.join(30)
    return results


def test_a_cap_splits_the_queued_callers_into_writes_that_each_carry_their_writer():
    release, batches = threading.Event(), []

    def alone(item):
        release.wait(30)
        batches.append([item])
        return item * 10

    def many(items):
        batches.append(list(items))
        return [i * 10 for i in items]

    commit = GroupCommit(alone, many, max_items=3)
    results = _run_queued(commit, release, [0, 1, 2, 3, 4, 5])
    assert results == {i: i * 10 for i in range(6)}  # every caller gets its own item's result
    assert batches[0] == [0] and sorted(len(b) for b in batches[1:]) == [2, 3]  # 5 queued: 3, then 2
    assert sorted(i for b in batches for i in b) == list(range(6))  # each item written once
    assert commit.writes == 3 and commit.shared_writes == 2


def test_without_a_cap_one_write_carries_every_queued_caller():
    release, batches = threading.Event(), []

    def alone(item):
        release.wait(30)
        batches.append([item])
        return item

    commit = GroupCommit(alone, lambda items: batches.append(list(items)) or list(items))
    assert _run_queued(commit, release, list(range(8))) == {i: i for i in range(8)}
    assert [sorted(b) for b in batches] == [[0], list(range(1, 8))]
