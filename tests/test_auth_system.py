"""Declared system identities: trusted components (provider adapters, media workers).

A system identity logs in by Ed25519 challenge like any machine, but holds ``bypass_rls``:
it reads private tables and every row, and calls the voice module's adapter reducers.
An ordinary machine identity with the same login flow gets none of that.
"""

from __future__ import annotations

from pathlib import Path

from auth_support import call, machine, new_key, sql
from cryptography.hazmat.primitives import serialization
from server_support import running


def raw(key: object) -> bytes:
    pub = key.public_key()  # type: ignore[attr-defined]
    return bytes(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


async def test_a_declared_system_identity_bypasses_rls_and_a_machine_does_not(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as srv:
        adapter_key, agent_key = new_key(), new_key()
        sys_id = srv.node.auth.declare_system_identity("twilio adapter", raw(adapter_key))
        assert srv.node.auth.declare_system_identity("again", raw(adapter_key)) == sys_id
        status, adapter = await machine(srv, adapter_key)
        assert status == 200 and adapter["identity"] == sys_id
        status, agent = await machine(srv, agent_key)
        assert status == 200 and agent["identity"] != sys_id

        args = {
            "provider": "twilio",
            "provider_call_id": "CA1",
            "direction": "inbound",
            "from_number": "+14155550100",
            "to_number": "+14155550199",
        }
        status, body = await call(srv, "call_started", args, adapter["token"])
        assert status == 200, body
        status, body = await sql(srv, "SELECT count(*) FROM calls", adapter["token"])
        assert status == 200 and body["rows"] == [[1]]
        status, body = await sql(srv, "SELECT count(*) FROM auth_audit", adapter["token"])
        assert status == 200 and body["rows"][0][0] > 0

        # the agent is not assigned to the call: it does not exist for it
        status, body = await sql(srv, "SELECT count(*) FROM calls", agent["token"])
        assert status == 200 and body["rows"] == [[0]]
        status, body = await sql(srv, "SELECT count(*) FROM auth_audit", agent["token"])
        assert status == 400
        # and cannot create calls: the voice tables refuse writes from non-system callers
        status, body = await call(
            srv, "call_started", {**args, "provider_call_id": "CA2"}, agent["token"]
        )
        assert status == 403 and body["error"]["code"] == "permission_denied", body
        status, body = await sql(srv, "SELECT count(*) FROM calls", adapter["token"])
        assert body["rows"] == [[1]]
