"""Sample a process tree from /proc: peak RSS (sum over the tree, and of its largest process) and CPU seconds.

RSS is summed over the master and all its descendants, so pages shared between forked workers
are counted once per process (the usual "RSS of the tree" figure; it overstates real use a bit).
CPU is utime+stime of every process seen, measured from :meth:`mark` on (so a run's CPU per
event excludes start-up), keeping the last value of processes that exit.
"""
from __future__ import annotations

import os
import threading

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int):
    """(ppid, cpu seconds, rss bytes) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    # fields after "comm": state(0) ppid(1) ... utime(11) stime(12) ... rss(21)
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK, int(rest[21]) * _PAGE


def tree(root: int) -> dict[int, tuple[float, int]]:
    """{pid: (cpu_s, rss)} for root and its descendants."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                procs[int(name)] = st
    out, todo = {}, [root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in out:
            out[pid] = procs[pid][1:]
            todo.extend(children.get(pid, ()))
    return out


class TreeMonitor:
    """Background sampler; ``with TreeMonitor(pid) as mon: ...; mon.peak_rss_mb, mon.cpu_s``."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root, self.interval = root, interval
        self.peak_rss = 0
        self.peak_proc_rss = 0  # the largest single process (a worker) seen
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._marked = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        t = tree(self.root)
        with self._lock:
            self.peak_rss = max(self.peak_rss, sum(rss for _, rss in t.values()))
            self.peak_proc_rss = max([self.peak_proc_rss, *(rss for _, rss in t.values())])
            for pid, (cpu, _) in t.items():
                # a process born after mark() spent all its CPU inside the measured window
                self._base.setdefault(pid, 0.0 if self._marked else cpu)
                self._last[pid] = cpu

    def mark(self) -> None:
        """Start counting CPU (and peak memory) from now."""
        t = tree(self.root)
        with self._lock:
            self._base = {pid: cpu for pid, (cpu, _) in t.items()}
            self._last = dict(self._base)
            self._marked = True
            self.peak_rss = sum(rss for _, rss in t.values())
            self.peak_proc_rss = max([0, *(rss for _, rss in t.values())])

    @property
    def cpu_s(self) -> float:
        with self._lock:
            return sum(self._last[p] - self._base.get(p, 0.0) for p in self._last)

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / 2**20

    @property
    def peak_proc_rss_mb(self) -> float:
        return self.peak_proc_rss / 2**20

    @property
    def nprocs(self) -> int:
        return len(tree(self.root))
