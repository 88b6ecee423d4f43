"""A throwaway PostgreSQL server for the tests: initdb in a temp dir, started on 127.0.0.1, stopped after.

The ``pg_server`` fixture (session scope) finds ``initdb`` and ``pg_ctl`` (``CRDTSYNC_PG_BINDIR``, then
PATH, then Debian's ``/usr/lib/postgresql/<version>/bin``, newest first), makes a cluster of its own in a
temp dir (own data dir, own free port, unix socket in the temp dir: it never touches a system cluster),
and creates the database ``crdtsync_test``. As root it runs the server as the ``postgres`` user (made by
Debian's package), or ``nobody``, since PostgreSQL refuses to run as root. Every wait is bounded.

Without server binaries (or psycopg) the tests that need it skip and say why. ``CRDTSYNC_PG_DSN`` points
the tests at a server you already run instead (its database must be disposable).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PgServer", "find_bindir", "pg_server"]

DATABASE = "crdtsync_test"
SUPERUSER = "crdtsync"


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and pg_isready, or None."""
    candidates: list[Path] = []
    if os.environ.get("CRDTSYNC_PG_BINDIR"):
        candidates.append(Path(os.environ["CRDTSYNC_PG_BINDIR"]))
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)),
                          key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
        candidates += [v / "bin" for v in versions]
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "pg_isready")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster under ``base``; ``conninfo`` reaches its test database over TCP."""

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.fsync = fsync  # off for tests (nothing here survives the run); on for benchmarks
        self.base = Path(tempfile.mkdtemp(prefix="crdtsync-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
                os.chown(self.base, pw.pw_uid, pw.pw_gid)
                break
            else:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.base, capture_output=True,
                              text=True, timeout=timeout, check=False, **self._run_as)

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={DATABASE}"

    @property
    def _options(self) -> str:
        return f"{'' if self.fsync else '-F '}-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"

    def start(self) -> None:
        r = self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync", timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        for _attempt in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options, "-w", "-t",
                          "60", "start", timeout=90)
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{self._log()}")
        deadline = time.monotonic() + 30
        while self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1",
                        timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready in 30 s:\n{self._log()}")
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def restart(self) -> None:
        """Stop the server (fast: its sessions are ended) and start it again on the same port."""
        for action in ("stop", "start"):
            args = ("-m", "fast") if action == "stop" else ("-l", str(self.log), "-o", self._options)
            r = self._run("pg_ctl", "-D", str(self.data), *args, "-w", "-t", "30", action, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"pg_ctl {action} failed:\n{r.stdout}\n{r.stderr}\n{self._log()}")

    def processes(self) -> list[int]:
        """The server's processes (Linux): its postmaster and every process it started (the backends)."""
        root = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = [root]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == root:
                    pids.append(int(entry.name))
        return pids

    def _log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            r = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
            if r.returncode != 0:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A libpq conninfo string of a disposable PostgreSQL database; skips if none can be had."""
    pytest.importorskip("psycopg", reason='psycopg is not installed: pip install -e ".[postgres]"')
    if os.environ.get("CRDTSYNC_PG_DSN"):
        yield os.environ["CRDTSYNC_PG_DSN"]
        return
    with own_server() as server:
        yield server.conninfo


@contextlib.contextmanager
def own_server() -> Iterator[PgServer]:
    """A PostgreSQL server started for the caller alone (one it may restart or freeze), stopped on exit;
    skips if no server binaries are found."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, pg_isready) found: install the "
                    "postgresql package (.ci/run does) or set CRDTSYNC_PG_BINDIR")
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
