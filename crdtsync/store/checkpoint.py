"""WAL checkpoints in a thread of their own, so that no commit waits for one.

In WAL mode SQLite appends each commit to the ``-wal`` file; a checkpoint copies those pages back into the
database file and syncs it. By default the connection that commits runs it, inside ``COMMIT``, once the
WAL holds 1,000 pages: one commit in a few then pays for copying every page written since, scattered
across the file (tens of milliseconds on a 100k-record device, five times its commit). A
``Checkpointer`` turns that off for the writing connection and runs the same passive checkpoint on a
connection of its own, in a daemon thread, once enough has been written since the last one. Passive
checkpoints never block the writer or the readers; durability is unchanged (a commit is durable in the
WAL, whether or not it was checkpointed yet).

The amount written is counted in rows (saves and removes), not pages: Python's ``sqlite3`` does not
report the WAL's size. A row changes at most a few pages, so ``every`` rows is of the order of SQLite's
own threshold.

SQLite starts the WAL over from its beginning only when a write finds every frame in it copied back.
Under a steady stream of commits a checkpoint running beside them never gets there (frames are appended
while it copies), so the WAL grew for as long as the writes went on: 46 MB after 5,000 single-row
commits, where SQLite's own checkpoints keep it at 4 MB, and each commit cost about a third more CPU for
appending to an ever longer file. So each checkpoint ends with a catch-up (``_catch_up``): the frames
written meanwhile (a few, against the thousands the first pass copied) are copied with the store's write
lock held, and the next commit starts the WAL over.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["Checkpointer"]

log = logging.getLogger("crdtsync.store")


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``path`` in a thread, after every ``every`` rows written.

    The thread starts at the first checkpoint due and stops at ``close``. ``synchronous`` is the store's
    level: the checkpoint syncs the database file as the writer would have.
    """

    def __init__(self, path: str, *, synchronous: str, every: int = 1000,
                 lock: threading.RLock | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 row, not {every}")
        self.path = path
        self.lock = lock  # held by the store around each commit: the catch-up holds it too (see above)
        self.synchronous = synchronous
        self.every = every
        self.runs = 0  # checkpoints finished (or failed and logged)
        self._written = 0
        self._due = 0  # checkpoints asked for
        self._closed = False
        self._broken = False  # the thread could not open its connection: nothing will run
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def wrote(self, rows: int) -> None:
        """A commit of ``rows`` saves and removes returned: ask for a checkpoint if enough was written."""
        written = self._written + rows
        if written < self.every:  # no lock: commits (the only callers) are serialised by the store's lock,
            self._written = written  # and nothing else changes the count (a local write commits one row)
            return
        with self._cond:
            self._written += rows
            if self._written < self.every or self._closed:
                return
            self._written = 0
            self._due = self.runs + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="crdtsync-checkpoint", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until the checkpoints asked for so far have run; False if ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._broken or self.runs >= self._due, timeout)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            log.exception("cannot open %s to checkpoint it; the WAL is checkpointed when the store closes", self.path)
            with self._cond:
                self._broken = True
                self._cond.notify_all()
            return
        try:
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self.runs < self._due)
                    if self._closed:
                        return
                    target = self._due
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self._catch_up(db)
                except sqlite3.Error:
                    log.warning("checkpoint of %s failed; the next one will copy its pages", self.path, exc_info=True)
                with self._cond:
                    self.runs = max(self.runs, target)
                    self._cond.notify_all()
        finally:
            db.close()

    def _catch_up(self, db: sqlite3.Connection) -> None:
        """Copy what was written during the checkpoint, no commit running meanwhile (the store's lock): the
        WAL is then all copied, and the next commit starts it over instead of appending to it. Always run:
        the first pass reports the WAL's length as it was when it started, so it cannot tell."""
        if self.lock is None:
            return
        with self.lock:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it is running, if any). Call before closing the store."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
