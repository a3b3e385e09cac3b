"""``voicehub audit verify`` on the data directory of a real node that served voice calls.

The node signs audit checkpoints with its server key; the CLI reads that key's public half
from the data directory, so an intact directory verifies (exit 0) and an edited snapshot
or log does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from auth_support import call, sql
from server_support import running

from voicehub.cli import main


def verify(data_dir: Path) -> int:
    with pytest.raises(SystemExit) as e:
        main(["audit", "verify", "--data-dir", str(data_dir)])
    return int(e.value.code or 0)


async def test_audit_verify_after_serving_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(tmp_path) as srv:
        owner = srv.node.auth.owner_token
        assert owner is not None
        for n in range(3):
            status, body = await call(
                srv,
                "call_started",
                {
                    "provider": "twilio",
                    "provider_call_id": f"CA{n}",
                    "direction": "inbound",
                    "from_number": "+14155550100",
                    "to_number": "+14155550199",
                },
                owner,
            )
            assert status == 200, body
        status, body = await call(srv, "audit_checkpoint", {}, owner)
        assert status == 200, body
        status, body = await sql(srv, "SELECT count(*) FROM audit_log", owner)
        assert status == 200 and body["rows"][0][0] >= 4
        status, body = await sql(srv, "SELECT count(*) FROM audit_log")
        assert status == 400, "the audit log is private"
    assert verify(tmp_path) == 0
    out = capsys.readouterr().out
    assert "audit verify" in out


def test_audit_verify_of_a_missing_directory_fails(tmp_path: Path) -> None:
    assert verify(tmp_path / "nowhere") != 0
