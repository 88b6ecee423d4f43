"""Server subprocesses for the benchmarks: start one, learn its port, read its CPU time, stop it.

Every server under test runs in its own process, started the same way, so that on a two-core machine the
server gets one core and the clients the other, whichever server it is. A server announces itself on stdout
with ``PORT <n>`` (the baselines) or ``listening on ws://HOST:<n>`` (``crdtsync relay``); it listens on port 0,
loopback only. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

__all__ = ["ROOT", "ServerProcess", "cpu_seconds", "server_process"]

ROOT = Path(__file__).absolute().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")
_PORT_LINE = re.compile(r"^(?:PORT (\d+)|listening on ws://[^\s]+:(\d+))")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process ``pid`` (Linux ``/proc``), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class ServerProcess:
    """A running server subprocess: its ``port``, its ``pid``, the lines it logged."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.pid = proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    async def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM, then SIGKILL after ``timeout``; returns what it wrote to stderr."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        assert self.proc.stderr is not None
        err = await self.proc.stderr.read()
        return err.decode(errors="replace")


@contextlib.asynccontextmanager
async def server_process(argv: Sequence[str], *, timeout: float = 30.0) -> AsyncIterator[ServerProcess]:
    """Run ``python <argv>`` from the repository root until it says its port; stop it on exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    server: ServerProcess | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    assert proc.stderr is not None
                    err = (await proc.stderr.read()).decode(errors="replace")
                    raise RuntimeError(f"server {' '.join(argv)} exited before listening:\n{err}")
                m = _PORT_LINE.match(line.decode(errors="replace").strip())
                if m:
                    break
        server = ServerProcess(proc, int(m.group(1) or m.group(2)))
        yield server
    finally:
        if server is None:
            server = ServerProcess(proc, 0)
        err = await server.stop()
        if proc.returncode not in (0, -signal.SIGTERM) and err.strip():
            print(f"[server {' '.join(argv)} exited {proc.returncode}]\n{err[-2000:]}", file=sys.stderr)
