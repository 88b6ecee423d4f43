"""``crdtsync relay`` as a user runs it: a JSON schema from ``Schema.to_dict()``, a tokens file, an app's
own schema module from the current directory, and clear refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crdtsync import LocalError, Replica, SQLiteStore
from crdtsync.cli import main
from crdtsync.relay.cli import load_schema

from .conftest import BOUND, SCHEMA, client, start_and_stop_cli_relay, sync

ROOT = Path(__file__).resolve().parents[2]

TOKENS = """
[tokens."s3cret-alice"]
user = "alice"
read = "*"
write = ["accounts"]
"""


async def test_relay_from_the_command_line_with_a_json_schema_and_tokens(
        tmp_path: Path, make_replica: Callable[..., Replica]) -> None:
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA.to_dict()))
    (tmp_path / "tokens.toml").write_text(TOKENS)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", "relay.db", "--schema", "schema.json",
        "--tokens", "tokens.toml", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), BOUND)).decode()
        assert line.startswith("listening on ws://127.0.0.1:"), line
        url = line.split()[-1]
        a, b = make_replica("a", "alice"), make_replica("b", "alice")
        rid = a.create("accounts", {"name": "Acme", "tags": {"x"}, "notes": "hi"})
        cid = a.create("contacts", {"name": "not writable"})
        async with client(a, url, token="s3cret-alice") as ca:
            res = await sync(ca)
        assert (res.uploaded, res.rejected) == (1, 1)
        async with client(b, url, token="s3cret-alice") as cb:
            await sync(cb)
        assert (rec := b.get("accounts", rid)) is not None and rec["notes"] == "hi" and b.get("contacts", cid) is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), BOUND) == 0
        err = (await proc.stderr.read()).decode()
        assert "OPEN" not in err and "device a of alice connected" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_schema_module_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed ``crdtsync`` script does not put the current directory on ``sys.path``; an app's
    ``--schema app_schema:SCHEMA`` must still be found there."""
    (tmp_path / "my_app_schema_7f3.py").write_text(
        "from crdtsync.schema import Collection, Schema, Str\nSCHEMA = Schema(Collection('notes', {'t': Str()}))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert [c.name for c in load_schema("my_app_schema_7f3:SCHEMA")] == ["notes"]
    sys.modules.pop("my_app_schema_7f3", None)


def test_a_schema_attribute_that_is_not_a_schema_is_named_with_its_article(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_bad_schema_8c1.py").write_text("SCHEMA = 5\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalError, match=r"^my_bad_schema_8c1:SCHEMA is an int, not a Schema$"):
        load_schema("my_bad_schema_8c1:SCHEMA")
    sys.modules.pop("my_bad_schema_8c1", None)


def test_schema_files_and_their_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "schema"  # a JSON file without the .json suffix
    plain.write_bytes(orjson.dumps(SCHEMA.to_dict()))
    assert load_schema(str(plain)) == SCHEMA
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"collections": 3}')
    assert main(["relay", "--db", str(tmp_path / "r.db"), "--schema", str(bad)]) == 2
    assert "crdtsync relay:" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "relay.example.com"])
def test_an_open_relay_refuses_every_non_loopback_host(host: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["relay", "--host", host, "--db", str(tmp_path / "r.db"), "--schema",
                 "tests.sync.conftest:SCHEMA"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to run an open relay (no --tokens) on {host}" in err and "--tokens" in err
    assert not (tmp_path / "r.db").exists()


def test_relay_help_explains_schema_and_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["relay", "--help"])
    out = capsys.readouterr().out
    assert "Schema.to_dict()" in out and '[tokens."s3cret-alice"]' in out and "(default: 8765" in out


def test_a_second_relay_on_the_same_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "relay.db"
    running = SQLiteStore(db)  # as a relay already running on it holds it
    taken = socket.socket()  # and its port: a relay that opened the database anyway stops there, not serves
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        assert main(["relay", "--port", str(port), "--db", str(db), "--schema", "tests.sync.conftest:SCHEMA"]) == 1
    finally:
        running.close()
        taken.close()
    err = capsys.readouterr().err
    assert f"cannot open the database {db}: another relay (or another program) is using it" in err


def test_a_database_in_a_missing_directory_is_one_line_naming_both(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "nope" / "relay.db"
    assert main(["relay", "--db", str(db), "--schema", "tests.sync.conftest:SCHEMA"]) == 1
    err = capsys.readouterr().err
    assert err == (f"crdtsync relay: cannot open the database {db}: its directory {tmp_path / 'nope'} does not "
                   "exist (create it first)\n")


def test_a_bad_option_in_a_json_schema_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"version": 1, "collections": [
        {"name": "notes", "fields": {"title": {"type": "str", "max_length": "3"}}}]}))
    taken = socket.socket()  # a relay that started anyway stops there (exit 1), not serves
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert main(["relay", "--port", str(taken.getsockname()[1]), "--db", str(tmp_path / "r.db"), "--schema",
                     str(bad)]) == 2
    finally:
        taken.close()
    assert capsys.readouterr().err == ("crdtsync relay: collection 'notes', field 'title': str field: option "
                                       "max_length must be None or an int >= 0, got '3'\n")
    assert not (tmp_path / "r.db").exists()


async def test_a_rate_under_one_frame_in_two_seconds_starts(tmp_path: Path) -> None:
    """``--rate 0.4`` passed the option check and the relay then died at start (a burst of 0 frames)."""
    await start_and_stop_cli_relay(tmp_path, "--rate", "0.4")


def test_a_port_in_use_is_one_line_of_error(tmp_path: Path) -> None:
    """The relay logged the warnings of a start and "relay stopped at log head 0" before the error."""
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "crdtsync", "relay", "--port", str(port), "--db", "relay.db",
                               "--schema", "tests.sync.conftest:SCHEMA"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=BOUND, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"crdtsync relay: cannot listen on 127.0.0.1:{port}: "), lines


async def test_verbose_logs_hold_no_token(tmp_path: Path) -> None:
    """With -v, websockets' DEBUG lines logged every request line, a Yjs client's ``?token=`` in clear."""
    from websockets.asyncio.client import connect

    (tmp_path / "tokens.toml").write_text('[tokens."sekrit-token-1"]\nuser = "alice"\nrooms = ["*"]\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", "relay.db", "--schema",
        "tests.sync.conftest:SCHEMA", "--tokens", "tokens.toml", "-v", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), BOUND)).decode()
        url = line.removeprefix("listening on ").strip()
        async with connect(f"{url}/yjs/team?token=sekrit-token-1") as ws:
            await asyncio.wait_for(ws.recv(), BOUND)  # the room's sync step 1: served
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), BOUND) == 0
        err = (await proc.stderr.read()).decode()
        assert " DEBUG " in err  # verbose, still
        assert "sekrit-token-1" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
