"""What the monitor does off the training thread: drawing pictures and writing report files.

Two lanes, each one daemon thread at most, started on demand and ended when its queue is empty:
pictures keep at most one drawing waiting (a newer one replaces it), report files are written in
order and none is dropped. Daemon threads never hold the process at exit, and :meth:`Worker.finish`
waits for them only as long as it is told to.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from typing import Any, Callable, Deque, Optional

__all__ = ["Lane", "Worker"]

Job = Callable[[], Any]


class Lane:
    """One background thread running jobs in order.

    Args:
        name: Name of the thread (shown by debuggers and in tracebacks).
        keep_one: Keep at most one job waiting: a newer one replaces it.
    """

    def __init__(self, name: str, keep_one: bool) -> None:
        self.name = name
        self.keep_one = keep_one
        self._jobs: Deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def submit(self, job: Job) -> None:
        """Queue ``job``; ignored after :meth:`stop` until :meth:`reopen`."""
        with self._cond:
            if self._stopped:
                return
            if self.keep_one:
                self._jobs.clear()
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs or self._stopped:
                    self._thread = None
                    self._cond.notify_all()
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception as err:  # a lane never dies of a job; the job's own failures are warnings already
                warnings.warn(f"LieGGCallback: a background job failed ({err!r}).", UserWarning, stacklevel=1)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued job ran (at most ``timeout`` seconds); True when they did."""
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + (self._thread is not None)

    def stop(self) -> None:
        """Drop the queued jobs and take no more; the running one is not waited for."""
        with self._cond:
            self._jobs.clear()
            self._stopped = True

    def reopen(self) -> None:
        """Take jobs again after :meth:`stop`."""
        with self._cond:
            self._stopped = False


class Worker:
    """The pictures lane, the report-files lane, and the run's last picture kept for the end.

    Each job's duration is passed to the ``on_drawn`` / ``on_saved`` callable given with it, so the
    caller charges its own clocks.
    """

    def __init__(self) -> None:
        self.pictures = Lane("liegg-draw", keep_one=True)
        self.reports = Lane("liegg-write", keep_one=False)
        self.deferred: Optional[Job] = None

    @staticmethod
    def timed(job: Job, record: Callable[[float], None]) -> Job:
        """``job``, passing its duration in seconds to ``record`` when it ends."""
        def run() -> None:
            started = time.perf_counter()
            try:
                job()
            finally:
                record(time.perf_counter() - started)

        return run

    def draw(self, job: Job, on_drawn: Callable[[float], None]) -> None:
        """Draw in the background: one drawing runs, at most one waits."""
        self.deferred = None
        self.pictures.submit(self.timed(job, on_drawn))

    def defer(self, job: Job) -> None:
        """Keep ``job`` as the picture drawn at the end unless a later one is drawn first."""
        self.deferred = job

    def write(self, job: Job, on_saved: Callable[[float], None]) -> None:
        """Write a report file in the background, after those queued before it."""
        self.reports.submit(self.timed(job, on_saved))

    def finish(self, timeout: float, on_drawn: Callable[[float], None]) -> int:
        """Draw the deferred picture, then wait at most ``timeout`` seconds; the jobs still pending."""
        if self.deferred is not None:
            job, self.deferred = self.deferred, None
            self.pictures.submit(self.timed(job, on_drawn))
        deadline = time.perf_counter() + max(timeout, 0.0)
        self.reports.wait(max(deadline - time.perf_counter(), 0.0))
        self.pictures.wait(max(deadline - time.perf_counter(), 0.0))
        return self.pictures.pending() + self.reports.pending()

    def finish_or_warn(self, timeout: float, on_drawn: Callable[[float], None]) -> None:
        """:meth:`finish`, and one warning when jobs are still running after ``timeout`` seconds."""
        pending = self.finish(timeout, on_drawn)
        if pending:
            warnings.warn(
                f"LieGGCallback: {pending} picture or report job(s) still running after {timeout:.1f} s; not waiting "
                "for them (a slow logger or disk?). They go on in the background until the process exits.",
                UserWarning, stacklevel=2,
            )

    def stop(self) -> None:
        """On an exception: drop every queued picture and the deferred one; nothing more is sent."""
        self.deferred = None
        self.pictures.stop()

    def reopen(self) -> None:
        """A new run takes pictures again."""
        self.pictures.reopen()

    def __getstate__(self) -> dict:
        # threads and locks do not pickle (ddp_spawn pickles callbacks): a fresh worker on the other side
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]
