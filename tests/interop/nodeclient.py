"""Drive ``yclient.mjs`` (a real y-websocket ``WebsocketProvider`` on Node) from asyncio tests.

One subprocess per client; commands go to its stdin and events come back on stdout, one JSON object a
line. Every wait is bounded; on failure the client's stderr and its recent events are in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["HERE", "NodeClient", "node_missing"]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "yclient.mjs"
TIMEOUT = 15.0


def node_missing() -> str | None:
    """Why the Node interop tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    for pkg in ("yjs", "y-websocket", "ws"):
        if not (HERE / "node_modules" / pkg / "package.json").exists():
            return f"tests/interop/node_modules lacks {pkg}: run (cd tests/interop && npm ci)"
    return None


class NodeClient:
    """A WebsocketProvider in a Node process, connected to ``server_url``/``room`` with ``token``."""

    def __init__(self, server_url: str, room: str, token: str | None = "rw", *,
                 protocols: list[str] | None = None) -> None:
        self.args = [server_url, room] + ([token] if token else [])
        self.env = {**os.environ, "YCLIENT_PROTOCOLS": ",".join(protocols)} if protocols else None
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._seen = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self.exited = False

    async def __aenter__(self) -> NodeClient:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), *self.args, cwd=HERE, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(AssertionError, ConnectionError):
                await self.command({"op": "exit"}, timeout=5)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                self.events.append(json.loads(line))
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.exited = True
            async with self._changed:
                self._changed.notify_all()

    async def _find(self, start: int, event: str, timeout: float, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        def match() -> tuple[int, dict[str, Any]] | None:
            for i in range(start, len(self.events)):
                ev = self.events[i]
                if ev.get("event") == event and all(ev.get(k) == v for k, v in fields.items()):
                    return i, ev
            return None

        async def wait() -> tuple[int, dict[str, Any]]:
            async with self._changed:
                await self._changed.wait_for(lambda: match() is not None or self.exited)
            found = match()
            if found is None:
                err = b""
                if self.proc is not None and self.proc.stderr is not None:
                    err = await self.proc.stderr.read()
                raise AssertionError(f"node client exited before {event} {fields}: {err.decode(errors='replace')}")
            return found
        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {event} {fields} within {timeout}s; events: {self.events[-10:]}") from None

    async def expect(self, event: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The first event named ``event`` (with ``fields``) after the one the last ``expect`` returned."""
        i, ev = await self._find(self._seen, event, timeout, fields)
        self._seen = i + 1
        return ev

    def saw(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    async def command(self, cmd: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        cid = next(self._ids)
        self.proc.stdin.write((json.dumps({**cmd, "id": cid}) + "\n").encode())
        await self.proc.stdin.drain()
        answer = "dump" if cmd["op"] == "dump" else "done"
        return (await self._find(0, answer, timeout, {"id": cid}))[1]

    async def synced(self) -> None:
        await self.expect("synced")

    async def dump(self) -> dict[str, Any]:
        doc: dict[str, Any] = (await self.command({"op": "dump"}))["doc"]
        return doc

    async def wait(self, timeout: float = TIMEOUT, **conditions: Any) -> None:
        await self.command({"op": "wait", **conditions}, timeout=timeout)
