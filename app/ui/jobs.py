"""Long jobs of the app (BagSSL, index builds, maps, CKA, Compare, the Lab): bounded, stoppable, kept apart.

* **Bounded.** A job counts its work before it starts (`ssl_core.work.WorkLimits`): a request that would take
  hours is refused with the count, the limit and what to change.
* **Stoppable.** Each running job has a stop flag, per browser session and job name. Every progress report of the
  job checks it (`StoppableProgress`): once set, the next report raises `Cancelled`, so the job ends within one
  batch. The flag is set by the job's Stop button (which also cancels the Gradio event) and, for all the
  session's jobs, when its tab closes (`demo.unload`). A session runs one job at a time.
* **Apart.** Jobs run in their own queue (`JOBS`), clicks and views in another (`VIEWS`), so one user's long job
  never holds up another user's clicks (`Queue`: a Gradio ``concurrency_id`` and its limit).
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from ssl_core.errors import BadRequest, Cancelled

log = logging.getLogger("patchlens")


@dataclass(frozen=True)
class Queue:
    """Events that share a Gradio concurrency group: at most ``limit`` of them run at once."""

    id: str
    limit: int | None

    def options(self) -> dict[str, Any]:
        return {"concurrency_id": self.id, "concurrency_limit": self.limit}


def queues(concurrency: int = 1) -> tuple[Queue, Queue]:
    """(views, jobs): clicks and views of every user in one queue, long jobs in another. Two of each at least,
    so that one user's slow request leaves room for another user's."""
    return Queue("views", max(2, concurrency)), Queue("jobs", max(2, concurrency))


@dataclass
class _Running:
    name: str
    flag: threading.Event
    started: float


class Jobs:
    """The running jobs of every session, with their stop flags."""

    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}  # session -> its job
        self._guard = threading.Lock()

    @contextmanager
    def run(self, session: str, name: str) -> Iterator[threading.Event]:
        """Register a job of ``session`` for its duration; yields its stop flag. Refused while another job of the
        session runs (one that was asked to stop does not count)."""
        job = _Running(name, threading.Event(), time.monotonic())
        with self._guard:
            other = self._running.get(session)
            if other is not None and not other.flag.is_set():
                raise BadRequest(f"Your {other.name} job is still running: wait for it, or press its Stop button.")
            self._running[session] = job
        log.info("%s started", name.lower())
        try:
            yield job.flag
        except Cancelled:
            log.info("%s stopped after %.1f s", name.lower(), time.monotonic() - job.started)
            raise
        finally:
            with self._guard:
                if self._running.get(session) is job:
                    del self._running[session]

    def stop(self, session: str, name: str | None = None) -> bool:
        """Ask the session's job (only if it is ``name``, when given) to stop; whether there was one."""
        with self._guard:
            job = self._running.get(session)
            if job is None or (name is not None and job.name != name):
                return False
            job.flag.set()
            return True

    def running(self) -> list[str]:
        """Names of the jobs running now (of every session)."""
        with self._guard:
            return [job.name for job in self._running.values() if not job.flag.is_set()]


class StoppableProgress:
    """Stands in for a job's ``gr.Progress``: each report first checks the job's stop flag (`Cancelled` once set)."""

    def __init__(self, progress: gr.Progress, flag: threading.Event, name: str):
        self.progress, self.flag, self.name = progress, flag, name

    def __call__(self, progress: Any, desc: str | None = None, total: int | None = None, unit: str = "steps",
                 **kwargs: Any) -> Any:
        self.check()
        return self.progress(progress, desc=desc, total=total, unit=unit, **kwargs)

    def check(self) -> None:
        if self.flag.is_set():
            raise Cancelled(f"Stopped: the {self.name} job was stopped before it finished.")


def session_of(request: gr.Request | None) -> str:
    """The browser session (tab) a request comes from ("" for calls without one)."""
    return str(getattr(request, "session_hash", None) or "")
