"""One run at a time per output and run id: the run lock, ``<output>/runs/<run_id>/lock.json``.

Two runs with the same ``--output`` and ``--run-id`` at once (a nightly job overlapping a manual
rerun) would plan over each other and lose cuts. So a run first takes the lock, with a
compare-and-swap write (:func:`pipeline.io.storage.put_if`: on S3 one conditional ``PutObject``
with ``If-None-Match: *``; locally under a ``flock`` of the directory). The lock says who holds it
(host, pid, start time) and when it was last renewed: the holder renews it every
:attr:`RunLock.renew_seconds` (a conditional write on its own version) while it lives, and releases
it at the end (a conditional delete). A second run finds it held and stops with exit status 2,
naming the holder. A lock whose holder stopped renewing for :attr:`RunLock.lease_seconds` (a
driver killed with ``kill -9``, a lost node) is taken over, as is one held by a process of this
host that no longer exists; the takeover is one conditional write on the stale version, so two
runs taking over at once cannot both win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from pipeline.io import storage
from pipeline.output.paths import RunPaths

__all__ = ["LockHolder", "RunLock", "RunLockedError"]

log = logging.getLogger("zipscribe.lock")


class RunLockedError(RuntimeError):
    """Another run holds the lock of this output and run id."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run's lock, as written in it."""

    host: str
    pid: int
    started_at: str  # ISO time, UTC
    renewed_at: float  # seconds since the epoch
    token: str  # this holder's own, so it knows its lock from another's

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on {self.host}, running since {self.started_at}, lock renewed "
                f"{max(0.0, now - self.renewed_at):.0f} s ago")

    @classmethod
    def parse(cls, data: bytes) -> Optional["LockHolder"]:
        try:
            fields = json.loads(data)
            return cls(host=str(fields["host"]), pid=int(fields["pid"]), started_at=str(fields["started_at"]),
                       renewed_at=float(fields["renewed_at"]), token=str(fields["token"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as stale


class RunLock:
    """The lock of one run (see the module docstring). Use as a context manager, or
    :meth:`acquire` / :meth:`release`."""

    def __init__(self, paths: RunPaths, lease_seconds: float = 120.0, renew_seconds: Optional[float] = None) -> None:
        self.uri = paths.lock
        self.run_id = paths.run_id
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds if renew_seconds is not None else lease_seconds / 4
        self._holder = LockHolder(host=socket.gethostname(), pid=os.getpid(),
                                  started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  renewed_at=time.time(), token=uuid.uuid4().hex)
        self._version: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: set when another run took the lock over while this one held it (its renewals failed)
        self.lost: Optional[str] = None

    def _body(self) -> bytes:
        return json.dumps(asdict(self._holder)).encode()

    def _stale(self, holder: Optional[LockHolder], now: float) -> Optional[str]:
        """Why the lock held by ``holder`` may be taken over, or ``None`` while it is live."""
        if holder is None:
            return "its lock file is unreadable"
        if now - holder.renewed_at > self.lease_seconds:
            return f"it was not renewed for {now - holder.renewed_at:.0f} s (lease {self.lease_seconds:.0f} s)"
        if holder.host == self._holder.host and not _alive(holder.pid):
            return f"its process {holder.pid} no longer runs on this host"
        return None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLockedError` naming who holds it."""
        self._version = storage.put_if(self.uri, self._body(), None)
        if self._version is None:
            try:
                data, version = storage.read_versioned(self.uri)
            except storage.MissingObjectError:  # released between the two requests: try once more
                data, version = b"", None
            if version is None:
                self._version = storage.put_if(self.uri, self._body(), None)
            else:
                holder = LockHolder.parse(data)
                why = self._stale(holder, time.time())
                if why is None:
                    raise RunLockedError(
                        f"run {self.run_id!r} on this output is being run by {holder.describe(time.time())}: wait for "
                        f"it to finish, or use another --run-id (a lock not renewed for {self.lease_seconds:.0f} s is "
                        f"taken over; {self.uri})")
                self._version = storage.put_if(self.uri, self._body(), version)
                if self._version is not None:
                    log.warning("took over the lock of run %s: %s (%s)", self.run_id, why,
                                "unreadable" if holder is None else holder.describe(time.time()))
            if self._version is None:
                raise RunLockedError(f"run {self.run_id!r}: another run took its lock at the same moment ({self.uri})")
        self._thread = threading.Thread(target=self._renew, name="run-lock", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            self._holder = LockHolder(**{**asdict(self._holder), "renewed_at": time.time()})
            try:
                version = storage.put_if(self.uri, self._body(), self._version)
            except storage.StorageError as exc:  # the store is down for now: the lease gives time
                log.warning("could not renew the lock of run %s: %s", self.run_id, exc)
                continue
            if version is None:
                self.lost = "another run took the lock over (this run's renewals had stopped for longer than the lease)"
                log.error("run %s: %s", self.run_id, self.lost)
                return
            self._version = version

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._version is not None and self.lost is None:
            try:
                storage.delete_if(self.uri, self._version)
            except storage.StorageError as exc:
                log.warning("could not remove the lock of run %s (it goes stale in %.0f s): %s", self.run_id,
                            self.lease_seconds, exc)
        self._version = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
