"""Passkeys end to end: registration and login ceremonies over HTTP against a real node.

A software authenticator produces real attestation and assertion objects; the node's own
auth service creates the identity and issues the token, which then works as a bearer for
``/v1/auth/me``. A replayed assertion (same ceremony) is refused.
"""

from __future__ import annotations

from pathlib import Path

from auth_support import post
from server_support import http, running
from soft_authenticator import SoftAuthenticator

ORIGIN = "https://voice.example.com"


async def test_passkey_register_and_login_over_http(tmp_path: Path) -> None:
    auth = {"public_url": ORIGIN, "rp_id": "voice.example.com", "rp_origin": ORIGIN}
    async with running(tmp_path, auth=auth) as srv:
        authn = SoftAuthenticator(ORIGIN)
        status, started = await post(
            srv, "/v1/auth/passkey/register/options", {"display_name": "Ada"}
        )
        assert status == 200, started
        cred = authn.create(started["options"])
        status, reg = await post(
            srv,
            "/v1/auth/passkey/register/verify",
            {"ceremony": started["ceremony"], "credential": cred},
        )
        assert status == 200, reg
        identity = reg["identity"]
        status, me = await http(
            "GET", srv.http_url + "/v1/auth/me", None, {"Authorization": f"Bearer {reg['token']}"}
        )
        assert status == 200 and me["identity"] == identity

        status, opts = await post(srv, "/v1/auth/passkey/login/options", {})
        assert status == 200, opts
        assertion = authn.get(opts["options"])
        body = {"ceremony": opts["ceremony"], "credential": assertion}
        status, login = await post(srv, "/v1/auth/passkey/login/verify", body)
        assert status == 200 and login["identity"] == identity, login
        status, again = await post(srv, "/v1/auth/passkey/login/verify", body)
        assert status == 401 and again["error"]["code"] == "passkey_invalid"

        status, opts = await post(srv, "/v1/auth/passkey/login/options", {})
        wrong_cred = authn.get(opts["options"], origin="https://evil.example.com")
        status, bad = await post(
            srv,
            "/v1/auth/passkey/login/verify",
            {"ceremony": opts["ceremony"], "credential": wrong_cred},
        )
        assert status == 401 and bad["error"]["code"] == "passkey_invalid"
