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
