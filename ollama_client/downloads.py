"""Model downloads: one background pull per model, whole-model progress, throttled events.

A `DownloadJob` reads Ollama's NDJSON pull stream in a green thread. Its progress is the sum of
`completed` over the sum of `total` of every layer seen, never going backwards; it is published
as `model_download_progress` at most every `min_interval_s` per model, except that a status
change and the final event are sent at once, and a throttled update is flushed after the interval
even if Ollama goes quiet.

With REDIS_URL, one process of a node runs a model's pull and holds its lease
(ollama_client/download_owners.py): the other processes join it, list it from the lease's state
and cancel it through the lease; and each of them sweeps the history every SWEEP_EVERY_S for
rows of this node whose owner's lease is gone (the process died), which it marks interrupted and
announces with a final event, so that no download stays "downloading" for ever.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import concurrency
from errors import ApiError, NotFoundError
from ollama_client.client import OllamaClient, PullStream
from ollama_client.download_owners import CANCEL_ASKED, LOST, OWNER_TTL_S, RENEW_EVERY_S, DownloadOwners
from ollama_client.history import DownloadHistory
from ollama_client.formatting import iso_time, percent_text
from ollama_client.names import canonical_or_none

log = logging.getLogger(__name__)

EVENT = "model_download_progress"
DOWNLOADING, COMPLETE, ERROR, CANCELLED = "downloading", "complete", "error", "cancelled"
FINISHED_RETENTION_S = 3600.0
MIN_EVENT_INTERVAL_S = 0.25  # at most ~4 progress events per second per model
START_WAIT_S = 10.0
SHUTDOWN_MESSAGE = "interrupted: server shutting down"
MAX_RUNNING_PERCENT = 99.9
SHUTDOWN_FLUSH_S = 0.2
SWEEP_EVERY_S = 1.0  # how often each process looks for downloads of this node whose owner died
ORPHANED_MESSAGE = "interrupted: the server process running the download stopped"
# How long a cancel asked of another process waits for it: past the lease's expiry, so that an
# owner that died meanwhile is noticed too.
REMOTE_CANCEL_WAIT_S = OWNER_TTL_S + 2.0
REMOTE_CANCEL_POLL_S = 0.05

Publish = Callable[[str, dict[str, Any]], None]


class PullProgress:
    """Whole-model progress over every layer seen; monotonic even when Ollama rolls a layer back.

    >>> p = PullProgress()
    >>> _ = p.update({"digest": "sha256:a", "total": 100, "completed": 50}); p.percent
    50.0
    >>> _ = p.update({"digest": "sha256:a", "total": 100, "completed": 40}); p.percent  # rolled back
    50.0
    >>> _ = p.update({"digest": "sha256:b", "total": 100, "completed": 0}); p.percent   # a new layer
    50.0
    >>> _ = p.update({"digest": "sha256:b", "total": 100, "completed": 60}); p.percent
    55.0
    >>> _ = p.update({"digest": "sha256:b", "total": 100, "completed": 100}); (p.percent, p.completed_bytes, p.total_bytes)
    (75.0, 150, 200)
    >>> _ = p.update({"digest": "sha256:a", "total": 100, "completed": 100}); p.percent  # never 100 until success
    99.9
    >>> p.finish(); p.percent
    100.0
    """

    def __init__(self):
        self._layers: dict[str, tuple[int, int]] = {}  # digest -> (highest completed, total)
        self.completed_bytes = 0
        self.total_bytes = 0
        self.percent = 0.0

    def update(self, line: dict[str, Any]) -> bool:
        """Fold one pull line in; return True if the reported numbers changed."""
        digest, total, completed = line.get("digest"), line.get("total"), line.get("completed", 0)
        if not isinstance(digest, str) or not _is_count(total) or not _is_count(completed):
            return False
        seen_completed, _ = self._layers.get(digest, (0, 0))
        self._layers[digest] = (min(max(seen_completed, completed), total), total)
        before = (self.completed_bytes, self.total_bytes, self.percent)
        self.completed_bytes = max(self.completed_bytes, sum(c for c, _ in self._layers.values()))
        self.total_bytes = sum(t for _, t in self._layers.values())
        if self.total_bytes:
            # Floored, never below what was already reported (Ollama announces layers one by one,
            # so the total grows), and 100 only once Ollama says success.
            share = math.floor(self.completed_bytes * 1000 / self.total_bytes) / 10
            self.percent = max(self.percent, min(share, MAX_RUNNING_PERCENT))
        return (self.completed_bytes, self.total_bytes, self.percent) != before

    def finish(self) -> None:
        """Mark every byte done (Ollama said success)."""
        self.completed_bytes = self.total_bytes
        self.percent = 100.0


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(eq=False)
class DownloadJob:
    """One model's pull: its state, and the handles that stop it."""

    model_name: str
    started_at: float
    key: str = ""  # the canonical model name the jobs (and the leases) are keyed by
    status: str = DOWNLOADING
    message: str = "Download started"
    error: str | None = None
    finished_at: float | None = None
    progress: PullProgress = field(default_factory=PullProgress)
    stream: PullStream | None = None
    thread: Any = None
    started: Any = None  # an Event set once the upstream answered (or failed)
    start_error: ApiError | None = None
    last_emit: float = -math.inf
    dirty: bool = False
    flusher: Any = None
    emit_lock: Any = field(default_factory=concurrency.Lock)
    lease_lock: Any = field(default_factory=concurrency.Lock)  # a renewal never follows the release
    record_id: int | None = None  # its row in the download history

    @property
    def running(self) -> bool:
        return self.status == DOWNLOADING

    def event(self) -> dict[str, Any]:
        """The `model_download_progress` payload."""
        return {"model_name": self.model_name, "progress": percent_text(self.progress.percent),
                "percent": self.progress.percent, "status": self.status,
                "completed_bytes": self.progress.completed_bytes, "total_bytes": self.progress.total_bytes,
                "message": self.error if self.status == ERROR and self.error else self.message}

    def summary(self) -> dict[str, Any]:
        """The `GET downloads` entry."""
        return {"model_name": self.model_name, "status": self.status,
                "progress": percent_text(self.progress.percent), "percent": self.progress.percent,
                "completed_bytes": self.progress.completed_bytes, "total_bytes": self.progress.total_bytes,
                "started_at": iso_time(self.started_at), "finished_at": iso_time(self.finished_at),
                "error": self.error, "message": self.message}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """A history row as a `GET downloads` entry."""
    return {"model_name": record["model_name"], "status": record["status"],
            "progress": percent_text(record["percent"]), "percent": record["percent"],
            "completed_bytes": record["completed_bytes"], "total_bytes": record["total_bytes"],
            "started_at": iso_time(record["started_at"]), "finished_at": iso_time(record["finished_at"]),
            "error": record["error"], "message": record["message"]}


def _event(summary: dict[str, Any]) -> dict[str, Any]:
    """The `model_download_progress` payload of a `GET downloads` entry."""
    return {name: summary[name] for name in ("model_name", "progress", "percent", "status", "completed_bytes",
                                             "total_bytes", "message")}


def _record_key(record: dict[str, Any]) -> str:
    """The model key of a history row (rows written before the fleet have none)."""
    return record.get("model_key") or canonical_or_none(record["model_name"]) or record["model_name"]


def _started_at(summary: dict[str, Any]) -> str:
    return summary.get("started_at") or ""


class DownloadManager:
    """Run pulls in the background, one job per model; publish progress; list, cancel, interrupt."""

    def __init__(self, client: OllamaClient, publish: Publish, *, clock: Callable[[], float] = time.time,
                 min_interval_s: float = MIN_EVENT_INTERVAL_S, start_wait_s: float = START_WAIT_S,
                 history: DownloadHistory | None = None, owners: DownloadOwners | None = None):
        self._client = client
        self._owners = owners  # with REDIS_URL: one process of this node runs each model's pull
        self._history = history
        if history is not None and owners is None:
            # A fleet of one: whatever is still running in the history ran in this server's last life.
            # With owners the other processes' pulls may be running: sweep() ends those whose owner died.
            history.interrupt_leftovers(clock())
        self._suspects: set[int] = set()  # rows without a live owner at the last sweep
        self._last_states: dict[int, dict[str, Any]] = {}  # rows' latest state as their owners wrote it
        self._publish = publish
        self._clock = clock
        self.min_interval_s = min_interval_s
        self._start_wait_s = start_wait_s
        self._lock = concurrency.Lock()
        self._jobs: dict[str, DownloadJob] = {}  # keyed by canonical model name
        self._closed = False

    # -- starting and joining --------------------------------------------------------------

    def start(self, key: str, model_name: str) -> tuple[DownloadJob, bool]:
        """Start a pull of `model_name` (or join the running one); return (job, joined).

        Waits until Ollama has answered the pull request, so an unreachable Ollama or an HTTP
        error is raised here (503/502/504) rather than only reported as an event.
        """
        with self._lock:
            if self._closed:
                raise ApiError("the server is shutting down", status=503)
            job = self._jobs.get(key)
            joined = job is not None and job.running
            if not joined:
                job = DownloadJob(model_name=model_name, started_at=self._clock(), key=key,
                                  started=concurrency.Event())
                if self._owners is not None and not self._owners.claim(key, job.summary()):
                    # Another process of this node runs it; its events reach our clients through the queue.
                    return job, True
                if self._history is not None:
                    owner = self._owners.owner_id if self._owners is not None else None
                    job.record_id = self._saved(lambda h: h.start(model_name, job.started_at, model_key=key,
                                                                  owner=owner))
                self._jobs[key] = job
                job.thread = concurrency.spawn(self._run, job)
                if self._owners is not None:
                    concurrency.spawn(self._hold_lease, job)
        # Wait for the upstream's answer; a joiner waits on the same event.
        job.started.wait(self._start_wait_s)
        if job.start_error is not None:
            raise job.start_error
        return job, joined

    def _hold_lease(self, job: DownloadJob) -> None:
        """Renew this process's lease on the model with the job's state while its pull runs, and
        cancel the pull when another process asks for it (_finish releases the lease)."""
        lost = False
        while True:
            with job.lease_lock:
                if not job.running:
                    return
                answer = self._owners.renew(job.key, job.summary(), job.record_id)
            if answer == CANCEL_ASKED:
                log.info("download of %s cancelled from another process", job.model_name)
                try:
                    self.cancel(job.key)
                except NotFoundError:
                    pass  # it ended meanwhile
                return
            if answer == LOST and not lost:
                log.warning("download of %s: another process took its lease (this one was not heard for "
                            "%.0f s); the pull goes on here", job.model_name, OWNER_TTL_S)
            lost = answer == LOST
            concurrency.sleep(RENEW_EVERY_S)

    def _run(self, job: DownloadJob) -> None:
        """Read one pull stream to its end (the green thread's body)."""
        try:
            try:
                stream = self._client.pull(job.model_name)
            except ApiError as exc:
                job.start_error = exc
                self._finish(job, ERROR, error=exc.message)
                return
            finally:
                job.started.set()
            with self._lock:
                if not job.running:  # cancelled or shut down while the request was in flight
                    stream.close()
                    return
                job.stream = stream
            self._publish_now(job)  # status: downloading, "Download started"
            self._read(job, stream)
        finally:
            if job.stream is not None:
                job.stream.close()

    def _read(self, job: DownloadJob, stream: PullStream) -> None:
        try:
            for line in stream:
                if not job.running:
                    return
                error = line.get("error")
                if error is not None:
                    self._finish(job, ERROR, error=f"Ollama: {error}")
                    return
                status = line.get("status")
                if status == "success":
                    job.progress.finish()
                    self._finish(job, COMPLETE, message="Download complete")
                    return
                changed = job.progress.update(line)
                if isinstance(status, str) and status != job.message:
                    job.message = status
                    changed = True
                if changed:
                    self._publish_throttled(job)
        except ApiError as exc:
            if job.running:
                self._finish(job, ERROR, error=exc.message)
            return
        except OSError as exc:  # a socket closed under the reader by cancel() or shutdown()
            if job.running:
                self._finish(job, ERROR, error=f"the connection to Ollama broke: {exc}")
            return
        if job.running:
            self._finish(job, ERROR, error="Ollama ended the pull stream without reporting success "
                                           "(Ollama stopped or restarted?)")

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, job: DownloadJob, status: str, *, message: str | None = None,
                error: str | None = None) -> bool:
        """Move a running job to its final status and publish that at once; False if it had ended."""
        with self._lock:
            if not job.running:
                return False
            job.status = status
            job.error = error
            job.message = message or error or status
            job.finished_at = self._clock()
        # A pending flusher finds nothing dirty after this publish, so it sends nothing after it.
        if error:
            log.warning("download of %s failed: %s", job.model_name, error)
        self._publish_now(job)
        if self._history is not None and job.record_id is not None:
            self._saved(lambda h: h.finish(job.record_id, job.summary(), job.finished_at))
        if self._owners is not None and job.key:
            # After the history has the final state: a process that finds the lease gone reads it there.
            with job.lease_lock:
                self._owners.release(job.key)
        return True

    def _saved(self, write: Callable[[DownloadHistory], Any]) -> Any:
        """Write to the history; a database that is down costs the record, never the download."""
        try:
            return write(self._history)
        except ApiError as exc:
            log.warning("download history not saved: %s", exc.message)
            return None

    def cancel(self, key: str) -> None:
        """Cancel the running pull of a model: close the upstream stream, mark it cancelled.

        A pull that another process of this node runs is cancelled by that process (asked through
        its lease); this waits until it has.
        """
        with self._lock:
            job = self._jobs.get(key)
            running_here = job is not None and job.running
            stream = job.stream if running_here else None
        if not running_here:
            self._cancel_elsewhere(key)
            return
        self._finish(job, CANCELLED, message="Download cancelled")
        if stream is not None:
            stream.close()  # Ollama cancels a pull when its last client goes away

    def _cancel_elsewhere(self, key: str) -> None:
        lease = self._owners.request_cancel(key) if self._owners is not None else None
        if lease is None or lease.owner == self._owners.owner_id:  # ours: a lease left by a failed release
            raise NotFoundError("no download of this model is running")
        state = None
        deadline = concurrency.monotonic() + REMOTE_CANCEL_WAIT_S
        while True:
            leases = self._owners.leases([key])
            current = leases.get(key) if leases is not None else lease  # Redis away: keep waiting
            if current is None or current.owner != lease.owner:
                break  # the owner ended it (or died: its lease expired)
            state = current.state or state
            if concurrency.monotonic() >= deadline:
                raise ApiError(f"the server process running this download did not answer the cancel within "
                               f"{REMOTE_CANCEL_WAIT_S:.0f} s; try again", status=504)
            concurrency.sleep(REMOTE_CANCEL_POLL_S)
        record = (self._saved(lambda h: h.get(lease.record_id))
                  if self._history is not None and lease.record_id is not None else None)
        if record is None or record["status"] == CANCELLED:
            return
        if record["status"] != DOWNLOADING:
            raise NotFoundError("no download of this model is running")  # it ended before the cancel arrived
        # The lease expired with the row still running: its owner died. The pull stopped with it.
        self._end_orphan(record, state, status=CANCELLED, message="Download cancelled")

    def shutdown(self) -> None:
        """Mark running jobs interrupted (publishing that) and stop their readers."""
        with self._lock:
            self._closed = True
            running = [job for job in self._jobs.values() if job.running]
        for job in running:
            self._finish(job, ERROR, error=SHUTDOWN_MESSAGE)
            if job.stream is not None:
                job.stream.close()  # the reader wakes, sees the job ended, and returns
            else:
                concurrency.kill(job.thread)  # still waiting for Ollama to answer the pull
        if running:
            # Give the socket writers a moment to send the "interrupted" events before exit.
            concurrency.sleep(SHUTDOWN_FLUSH_S)

    # -- reading back --------------------------------------------------------------------------

    def is_running(self, key: str) -> bool:
        """Whether a pull of the model runs in this process or, with owners, another of this node."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return True
        lease = self._owners.lease(key) if self._owners is not None else None
        return lease is not None and lease.owner != self._owners.owner_id

    def list(self) -> list[dict[str, Any]]:
        """Running downloads and those that finished in the last hour, one a model (its latest),
        oldest first.

        This process's jobs; with owners, the pulls other processes of this node run (their
        leases' state); from the history, those that ended elsewhere or before the last restart.
        """
        now = self._clock()
        with self._lock:
            for key in [k for k, j in self._jobs.items()
                        if j.finished_at is not None and now - j.finished_at > FINISHED_RETENTION_S]:
                del self._jobs[key]
            latest = {key: job.summary() for key, job in self._jobs.items()}

        def keep(key: str, summary: dict[str, Any]) -> None:
            # ISO times of one format and zone sort as the times do. A tie is the same download, seen
            # running in a lease an instant before its owner released it, and ended in the history.
            known = latest.get(key)
            if known is None or _started_at(summary) > _started_at(known) or (
                    _started_at(summary) == _started_at(known) and known["status"] == DOWNLOADING):
                latest[key] = summary

        if self._owners is not None:
            for lease in self._owners.held_elsewhere() or []:
                if lease.state is not None:
                    keep(lease.model_key, lease.state)
        if self._history is not None:
            for record in self._saved(lambda h: h.finished_since(now - FINISHED_RETENTION_S)) or []:
                keep(_record_key(record), _summary(record))
        return sorted(latest.values(), key=_started_at)

    # -- downloads whose owner died ------------------------------------------------------------

    @property
    def sweeps(self) -> bool:
        """Whether run_sweeps has anything to do (several processes share the history)."""
        return self._owners is not None and self._history is not None

    def run_sweeps(self) -> None:
        """sweep() every SWEEP_EVERY_S until shutdown (a background task's body)."""
        failing = False
        while not self._closed:
            try:
                self.sweep()
                failing = False
            except ApiError as exc:  # the database is away: the next sweep tries again
                if not failing:
                    log.warning("could not look for downloads whose server process stopped: %s", exc.message)
                failing = True
            except Exception:  # a sweeper that dies silently would leave dead owners' downloads running
                log.exception("could not look for downloads whose server process stopped; retrying")
            concurrency.sleep(SWEEP_EVERY_S)

    def sweep(self) -> int:
        """Mark interrupted this node's running rows whose owner's lease is gone; return how many.

        A row is ended when its lease was missing (or another process's) at two sweeps in a row, so
        that an owner that renews late once (Redis restarted empty, a short stall) keeps its pull.
        While Redis cannot say, nobody is declared dead.
        """
        if not self.sweeps:
            return 0
        with self._lock:
            mine = {job.record_id for job in self._jobs.values() if job.running}
        rows = [r for r in self._history.running() if r["id"] not in mine]
        leases = self._owners.leases(sorted({_record_key(r) for r in rows}))
        if leases is None:
            return 0
        suspects: set[int] = set()
        ended = 0
        for row in rows:
            lease = leases[_record_key(row)]
            if lease is not None and lease.owner == row["owner"] and lease.record_id in (None, row["id"]):
                if lease.state is not None:
                    self._last_states[row["id"]] = lease.state
            elif row["id"] in self._suspects:
                ended += self._end_orphan(row, self._last_states.get(row["id"]), announce=lease is None)
            else:
                suspects.add(row["id"])
        self._suspects = suspects
        live = {r["id"] for r in rows}
        self._last_states = {i: s for i, s in self._last_states.items() if i in live}
        return ended

    def _end_orphan(self, row: dict[str, Any], state: dict[str, Any] | None, *, status: str = ERROR,
                    message: str = ORPHANED_MESSAGE, announce: bool = True) -> bool:
        """End a row whose owner died with its last known state; announce it unless another pull of
        the model runs now (its events tell the clients). False if another process ended it first."""
        last = state if state is not None else _summary(row)
        finished_at = self._clock()
        summary = {**last, "status": status, "message": message, "finished_at": iso_time(finished_at),
                   "error": message if status == ERROR else None}
        if not self._history.end_if_running(row["id"], summary, finished_at):
            return False
        log.warning("download of %s: the server process running it stopped (its lease was not renewed for "
                    "%.0f s); marked %s", row["model_name"], OWNER_TTL_S, status)
        if announce:
            self._publish(EVENT, _event(summary))
        return True

    # -- publishing ----------------------------------------------------------------------------

    def _publish_throttled(self, job: DownloadJob) -> None:
        now = concurrency.monotonic()
        with self._lock:
            wait = job.last_emit + self.min_interval_s - now
            if wait > 0:
                job.dirty = True
                if job.flusher is None:
                    job.flusher = concurrency.spawn(self._flush_later, job, wait)
                return
        self._publish_now(job)

    def _flush_later(self, job: DownloadJob, delay_s: float) -> None:
        while True:
            concurrency.sleep(delay_s)
            with self._lock:
                # The reader may have published meanwhile (its line came in just as this was due).
                delay_s = job.last_emit + self.min_interval_s - concurrency.monotonic()
                if delay_s <= 0 or not job.dirty:
                    job.flusher = None
                    break
        self._publish_now(job, only_if_dirty=True)

    def _publish_now(self, job: DownloadJob, *, only_if_dirty: bool = False) -> None:
        # emit_lock keeps one job's events in the order their payloads were taken.
        with job.emit_lock:
            with self._lock:
                if only_if_dirty and not job.dirty:
                    return
                job.dirty = False
                job.last_emit = concurrency.monotonic()
                payload = job.event()
            self._publish(EVENT, payload)

