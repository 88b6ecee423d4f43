"""``crdtsync relay`` argument handling that needs no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtsync.cli import main


def test_open_relay_refuses_non_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["relay", "--host", "0.0.0.0", "--db", str(tmp_path / "r.db"), "--schema",
                 "tests.sync.conftest:SCHEMA"])
    assert code == 2
    assert "refusing to run an open relay" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_bad_schema_and_tokens_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["relay", "--db", str(tmp_path / "r.db"), "--schema", "nope"]) == 2
    assert "MODULE:ATTR" in capsys.readouterr().err
    bad = tmp_path / "t.toml"
    bad.write_text('[tokens."x"]\nread = ["a"]\n')
    assert main(["relay", "--db", str(tmp_path / "r.db"), "--schema", "tests.sync.conftest:SCHEMA",
                 "--tokens", str(bad)]) == 2
    assert "needs a user" in capsys.readouterr().err


def test_schema_from_json(tmp_path: Path) -> None:
    import orjson

    from crdtsync.relay.cli import load_schema

    from .conftest import SCHEMA

    path = tmp_path / "schema.json"
    path.write_bytes(orjson.dumps(SCHEMA.to_dict()))
    assert load_schema(str(path)) == SCHEMA
    assert load_schema("tests.sync.conftest:SCHEMA") == SCHEMA


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--port", "99999", "from 0 to 65535"), ("--port", "-1", "from 0 to 65535"),
    ("--rate", "0", "at least 0.001"), ("--rate", "nan", "at least 0.001"), ("--keep-log", "-5", "at least 0"),
    ("--max-frame", "0", "at least 65536"), ("--port", "http", "not a number"), ("--cache-mb", "0.5", "at least 1"),
    ("--max-connections", "0", "at least 1"), ("--max-connections", "many", "not a number"),
])
def test_numeric_options_out_of_range_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       option: str, value: str, says: str) -> None:
    """``--rate 0`` used to start a relay that divided by zero on every device's first frame, and
    ``--port 99999`` ended in a traceback."""
    with pytest.raises(SystemExit) as e:
        main(["relay", "--db", str(tmp_path / "r.db"), "--schema", "tests.sync.conftest:SCHEMA", option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert option in err and says in err and "Traceback" not in err
    assert not (tmp_path / "r.db").exists()


def test_tokens_naming_what_the_schema_lacks_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in a grant only showed later, as every write refused or every record out of scope."""
    tokens = tmp_path / "t.toml"
    tokens.write_text('[tokens."a"]\nuser = "alice"\nread = ["acounts", "*"]\nwrite = ["accounts"]\n'
                      '[tokens."b"]\nuser = "bob"\nwrite = ["contacts"]\nwhere = { accounts = { ownr = "bob" }, '
                      'deals = { owner = "bob" } }\nrooms = ["*", "bob-*"]\n')
    assert main(["relay", "--db", str(tmp_path / "r.db"), "--schema", "tests.sync.conftest:SCHEMA",
                 "--tokens", str(tokens)]) == 2
    err = capsys.readouterr().err
    assert "user 'alice': read names unknown collection 'acounts'" in err
    assert "user 'bob': where names unknown field accounts.ownr" in err
    assert "user 'bob': where names unknown collection 'deals'" in err
    assert "user 'bob': rooms names 'bob-*', but only \"*\" alone means more than one room" in err
    assert not (tmp_path / "r.db").exists()


def test_a_postgres_url_without_psycopg_is_a_clear_error(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as without the [postgres] extra: importing it fails
    monkeypatch.delitem(sys.modules, "crdtsync.store.postgres", raising=False)
    code = main(["relay", "--db", "postgresql://u:secret@127.0.0.1:1/db", "--schema", "tests.sync.conftest:SCHEMA"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "secret" not in err
    assert 'PostgresStore needs psycopg 3: pip install "crdtsync[postgres]"' in err


def test_a_pg_schema_with_a_sqlite_db_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--pg-schema`` next to a SQLite ``--db`` was ignored without a word."""
    import socket

    with socket.socket() as taken:  # were the option ignored, the relay would fail here, not serve for good
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(["relay", "--db", str(tmp_path / "r.db"), "--pg-schema", "relay", "--schema",
                     "tests.sync.conftest:SCHEMA", "--port", str(taken.getsockname()[1])])
    assert code == 2
    assert "--pg-schema is for a PostgreSQL --db" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(("rate", "burst"), [(0.001, 1), (0.4, 1), (0.5, 1), (2.5, 5), (500.0, 1000)])
def test_every_accepted_rate_makes_valid_limits(rate: float, burst: int) -> None:
    """``--rate`` under 0.5 made a burst of 0, which ``Limits`` refuses: the relay died at start."""
    from argparse import Namespace

    from crdtsync.relay.cli import limits

    got = limits(Namespace(rate=rate, max_frame=64 * 1024))
    assert (got.rate, got.burst, got.max_frame) == (rate, burst, 64 * 1024)


async def test_a_reload_refuses_tokens_naming_what_the_schema_lacks(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Startup refused such a file (exit 2), SIGHUP took it."""
    from crdtsync.relay import Relay, Tokens, load_tokens
    from crdtsync.relay.cli import reload_tokens
    from crdtsync.store.memory import MemoryStore

    from .conftest import SCHEMA

    path = tmp_path / "t.toml"
    path.write_text('[tokens."t1"]\nuser = "alice"\nread = "*"\nwrite = "*"\n')
    relay = Relay(MemoryStore(), SCHEMA, Tokens(load_tokens(path)))
    before = relay.tokens
    path.write_text('[tokens."t2"]\nuser = "bob"\nread = ["nosuch"]\nwrite = "*"\n'
                    '[tokens."t3"]\nuser = "carol"\nwhere = { accounts = { ownr = "carol" } }\n')
    assert not reload_tokens(relay, path)
    assert relay.tokens is before
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"kept the old tokens: {path} names what the schema")
    assert "user 'bob': read names unknown collection 'nosuch'" in errors[0]
    assert "user 'carol': where names unknown field accounts.ownr" in errors[0]
    path.write_text('[tokens."t2"]\nuser = "bob"\nread = ["accounts"]\nwrite = "*"\n')
    assert reload_tokens(relay, path)
    assert (g := relay.tokens.grant("t2")) is not None and g.user == "bob" and relay.tokens.grant("t1") is None


def test_max_connections_is_parsed_and_defaults_to_the_open_files_limit() -> None:
    import argparse

    from crdtsync.relay.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--schema", "s.json", "--max-connections", "300"]).max_connections == 300
    assert parser.parse_args(["--schema", "s.json"]).max_connections is None  # Relay's default: from the limit
    assert "--max-connections" in parser.format_help()
