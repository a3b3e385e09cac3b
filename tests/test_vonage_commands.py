"""Call control through the Vonage SDK against a fake Voice API on loopback: ``hangup`` and
``transfer`` reducers -> the command executor -> exactly one ``PUT /v1/calls/{uuid}`` with
the documented JSON and a valid RS256 application JWT -> ``command_result`` done; an API
error -> failed. Also the pure parts: NCCO building and the api_host rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from vonage_support import (
    APPLICATION_ID,
    VonageNode,
    eventually,
    fake_vonage,
    vonage_config,
    vonage_node,
    websocket_endpoint,
)

from providers.commands import ProviderError
from providers.vonage import ncco
from providers.vonage.control import VonageControl, split_api_host
from providers.vonage.ncco import CALL_ID_HEADER


async def _call(srv: VonageNode, uuid: str) -> int:
    r = await srv.answer(uuid)
    assert r.status == 200, r.body
    return int(websocket_endpoint(r.json())["headers"][CALL_ID_HEADER])


def _command(srv: VonageNode, command_id: int) -> dict[str, Any]:
    res = srv.rows("SELECT status, result, error FROM call_commands WHERE id = $1", [command_id])
    status, result, error = res[0]
    return {"status": status, "result": result, "error": error}


async def _issue(srv: VonageNode, reducer: str, args: dict[str, Any]) -> int:
    out = await srv.client.call(reducer, args)
    return int(out["command_id"])


async def test_hangup_sends_one_signed_put_and_records_done(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id = await _call(srv, "u-hang")
        cid = await _issue(srv, "hangup", {"call_id": call_id})
        await eventually(lambda: _command(srv, cid)["status"] == "done")
        (put,) = fake.calls
        assert (put.uuid, put.body) == ("u-hang", {"action": "hangup"})
        assert put.claims["application_id"] == APPLICATION_ID
        assert fake.rejected_auth == 0
        assert _command(srv, cid)["result"] == {"uuid": "u-hang", "action": "hangup"}
        # the same hangup again is deduplicated by the reducer: no second PUT
        assert await _issue(srv, "hangup", {"call_id": call_id}) == cid
        await asyncio.sleep(0.2)
        assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("target", "endpoint"),
    [
        ("+14155550100", {"type": "phone", "number": "14155550100"}),
        ("sip:agent@pbx.example.com", {"type": "sip", "uri": "sip:agent@pbx.example.com"}),
    ],
)
async def test_transfer_puts_a_connect_ncco(
    tmp_path: Path, target: str, endpoint: dict[str, str]
) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id = await _call(srv, "u-xfer")
        cid = await _issue(srv, "transfer", {"call_id": call_id, "target": target})
        await eventually(lambda: _command(srv, cid)["status"] == "done")
        (put,) = fake.calls
        assert put.uuid == "u-xfer"
        assert put.body["action"] == "transfer"
        dest = put.body["destination"]
        assert dest["type"] == "ncco"
        (connect,) = dest["ncco"]
        assert connect["action"] == "connect"
        assert connect["endpoint"] == [endpoint]


async def test_api_errors_fail_the_command(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id = await _call(srv, "u-gone")
        fake.errors["u-gone"] = (404, {"title": "Not Found", "detail": "call u-gone not found"})
        cid = await _issue(srv, "hangup", {"call_id": call_id})
        await eventually(lambda: _command(srv, cid)["status"] == "failed")
        assert "404" in _command(srv, cid)["error"]
        assert len(fake.calls) == 1
        bad = await _issue(srv, "transfer", {"call_id": call_id, "target": "not a number"})
        await eventually(lambda: _command(srv, bad)["status"] == "failed")
        assert "not a phone number" in _command(srv, bad)["error"]
        assert len(fake.calls) == 1  # nothing sent for an unusable target


async def test_a_wrong_private_key_is_refused_by_the_fake(tmp_path: Path) -> None:
    from dataclasses import replace

    from vonage_support import rsa_keypair

    async with fake_vonage() as fake:
        other_pem, _ = rsa_keypair()
        control = VonageControl(replace(vonage_config(fake.port), private_key=other_pem))
        with pytest.raises(ProviderError, match="AuthenticationError"):
            await control.hangup("u-x")
        assert fake.rejected_auth == 1 and fake.calls == []
        good = VonageControl(vonage_config(fake.port))
        assert await good.hangup("u-x") == {"uuid": "u-x", "action": "hangup"}
        assert len(fake.calls) == 1


async def test_unreachable_api_is_a_provider_error() -> None:
    from dataclasses import replace

    from vonage_support import free_port

    cfg = replace(vonage_config(0), api_host=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderError, match="unreachable"):
        await VonageControl(cfg).hangup("u-x")


def test_api_host_rules() -> None:
    assert split_api_host("") == ("api.nexmo.com", False)
    assert split_api_host("api-us.vonage.com") == ("api-us.vonage.com", False)
    assert split_api_host("http://127.0.0.1:8080") == ("127.0.0.1:8080", True)
    assert split_api_host("https://api.example.com") == ("api.example.com", False)
    with pytest.raises(ValueError, match="loopback"):
        split_api_host("http://api.example.com")


def test_ncco_models_dump_to_vonage_json() -> None:
    c = ncco.media_connect("wss://h/m", 3, "tok", "https://h/e", from_number="+1 (415) 555-0100")
    out = ncco.answer_ncco(c, greeting="Hello")
    assert [a["action"] for a in out] == ["talk", "connect", "wait"]
    assert out[1]["from"] == "14155550100" and "randomFromNumber" not in out[1]
    assert ncco.answer_ncco(ncco.media_connect("wss://h/m", 3, "t", "https://h/e"))[0][
        "randomFromNumber"
    ]
    with pytest.raises(ValueError):
        ncco.transfer_actions("12")
