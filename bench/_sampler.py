"""A small wall-clock sampling profiler for every thread of this process.

cProfile and pyinstrument only see the thread that started them; a pass runs its
sagas on a thread pool. This sampler wakes every `interval` seconds, takes
`sys._current_frames()` and attributes each thread's current stack to one
category, walking from the innermost frame outwards and stopping at the first
frame that belongs to a known layer:

- database: sqlalchemy, psycopg (queries, waiting for PostgreSQL, the pool)
- pantry:   httpx, httpcore, h11, http.client, socket, ssl, selectors
- python:   udx itself (and whatever stdlib it calls: json, uuid, dataclasses)
- waiting:  an idle thread (innermost frame in threading/queue/concurrent.futures
            with no layer above it that is busy), e.g. an idle pool worker or the
            main thread blocked on the pool's results. Reported, not in the split.

A thread blocked in a C call (socket recv, libpq) is sampled in the Python
frame that made the call, so waiting for the database counts as database.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any

_DB = ("/sqlalchemy/", "/psycopg/", "/psycopg_binary/", "/psycopg_pool/")
_HTTP = (
    "/httpx/",
    "/httpcore/",
    "/h11/",
    "/http/client.py",
    "/socket.py",
    "/ssl.py",
    "/selectors.py",
    "/anyio/",
)
_WAIT = ("/threading.py", "/queue.py", "/concurrent/futures/")


def classify(frame: Any) -> tuple[str, str]:
    """(category, innermost 'file:function' of that category)."""
    innermost = frame
    f = frame
    while f is not None:
        fn = f.f_code.co_filename
        if any(p in fn for p in _DB):
            return "database", _where(f)
        if any(p in fn for p in _HTTP):
            return "pantry", _where(f)
        if "/udx/" in fn:
            if f is not innermost and any(p in innermost.f_code.co_filename for p in _WAIT):
                return "waiting", _where(innermost)
            return "python", _where(innermost)
        f = f.f_back
    if any(p in innermost.f_code.co_filename for p in _WAIT):
        return "waiting", _where(innermost)
    return "python", _where(innermost)


def _where(f: Any) -> str:
    fn = f.f_code.co_filename
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in fn:
            fn = fn.split(marker, 1)[1]
            break
    return f"{fn}:{f.f_code.co_name}"


class Sampler:
    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.counts: collections.Counter[str] = collections.Counter()
        self.where: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.cpu0 = self.wall0 = 0.0
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Sampler:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            self.ticks += 1
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                cat, where = classify(frame)
                self.counts[cat] += 1
                self.where[cat][where] += 1

    def split(self) -> dict[str, float]:
        busy = {k: v for k, v in self.counts.items() if k != "waiting"}
        total = sum(busy.values()) or 1
        return {k: busy.get(k, 0) / total for k in ("database", "pantry", "python")}

    def report(self, top: int = 8) -> dict[str, Any]:
        return {
            "samples": dict(self.counts),
            "ticks": self.ticks,
            "share_of_busy_thread_time": self.split(),
            "process_cpu_s": self.cpu,
            "wall_s": self.wall,
            "cpu_cores_used": self.cpu / self.wall if self.wall else 0.0,
            "top": {
                cat: self.where[cat].most_common(top) for cat in ("database", "pantry", "python")
            },
        }
