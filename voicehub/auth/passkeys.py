"""Passkeys (WebAuthn) for human login: the registration and login ceremonies and their routes.

``PasskeyService`` runs both ceremonies with py_webauthn on top of an ``AuthService``
(declared here as ``AuthServiceProtocol``: identities, tokens, audit, principals, RP
settings) and the ``__passkeys__`` table (``voicehub.auth.passkey_store``).
``passkey_routes`` exposes them as JSON endpoints under ``/v1/auth/passkey/``.

A ceremony is two requests: ``.../options`` remembers a fresh challenge under a random
ceremony id and returns the options for ``navigator.credentials.create()/get()``;
``.../verify`` takes that id and the browser's ``PublicKeyCredential.toJSON()``.

Invariants:

* a token is issued only for a response signed over a challenge this server issued,
  for this RP id and origin, by the key registered for that credential id;
* a ceremony id is consumed by its first verify, whatever the outcome (single use), and
  is refused after ``ceremony_ttl_s``;
* a credential's counter only moves forward: a response whose counter does not increase
  (a cloned authenticator) is refused and audited, and the counter check and its update
  run on the event loop with no ``await`` in between;
* every refusal is audited and answered ``401 passkey_invalid`` (a refused token
  issue keeps the auth service's own error, e.g. ``identity_not_active``).

Signature and attestation checks are CPU work, so they run on a worker thread; every
read and commit of the store stays on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from core.database import Database
from voicehub.auth.http import error_response, json_response, read_object
from voicehub.auth.passkey_store import (
    CeremonyError,
    CeremonyStore,
    PasskeyRow,
    PasskeyStore,
    counter_regressed,
)
from voicehub.server.errors import ApiError

log = logging.getLogger("voicehub.auth.passkeys")

PASSKEY_INVALID = "passkey_invalid"
"""The error code (HTTP 401) of every refused passkey ceremony."""
METHOD = "passkey"
"""The login method passed to ``issue_token`` and ``audit``."""
REGISTER_EVENT = "passkey_register"
LOGIN_EVENT = "passkey_login"
REMOVE_EVENT = "passkey_remove"
HUMAN = "human"

REASONS: dict[str, str] = {
    "other_session": "finish adding a passkey with the session that started it",
    "already_registered": "this passkey is already registered",
    "unknown_credential": "this passkey is not registered",
    "not_allowed": "this passkey does not belong to that identity",
    "user_handle_mismatch": "the passkey's user handle does not match its credential",
    "counter_regression": "the authenticator's signature counter did not increase"
    " (a cloned authenticator?); login refused",
}
"""What the client is told for each audited refusal reason (others carry their own text)."""

ALGORITHMS: list[COSEAlgorithmIdentifier] = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]
"""Largest accepted request body (a credential is a few kilobytes)."""


# ---------------------------------------------------------------- what we need from auth


class PrincipalProtocol(Protocol):
    """Who made a request; ``kind == "anonymous"`` means not logged in."""

    @property
    def identity(self) -> str: ...

    @property
    def kind(self) -> str: ...


class RelyingPartySettings(Protocol):
    """The WebAuthn relying party: its id (a domain), display name and web origin."""

    @property
    def rp_id(self) -> str: ...

    @property
    def rp_name(self) -> str: ...

    @property
    def rp_origin(self) -> str: ...


class AuthServiceProtocol(Protocol):
    """The part of the auth service passkeys use (identities, tokens, audit, principals)."""

    @property
    def settings(self) -> RelyingPartySettings: ...

    def create_identity(self, kind: str, display_name: str, email: str | None = None) -> str: ...

    def issue_token(self, identity: str, method: str, remote: str | None) -> dict[str, Any]: ...

    def audit(
        self,
        event: str,
        identity: str | None,
        method: str,
        ok: bool,
        detail: dict[str, Any] | None = None,
        remote: str | None = None,
    ) -> None: ...

    def principal(self, authorization_header: str | None) -> PrincipalProtocol: ...


# ---------------------------------------------------------------- the service


def _descriptor(row: PasskeyRow) -> PublicKeyCredentialDescriptor:
    transports = []
    for t in row.transports:
        try:
            transports.append(AuthenticatorTransport(t))
        except ValueError:
            continue
    return PublicKeyCredentialDescriptor(id=row.credential_id, transports=transports or None)


def _b64(b: bytes) -> str:
    return bytes_to_base64url(b)


def _why(exc: BaseException) -> str:
    """A client-safe reason for a failed verification (py_webauthn's text, or a generic one)."""
    if isinstance(exc, WebAuthnException) and str(exc):
        return str(exc)[:200]
    return "the credential is malformed"


class PasskeyService:
    """Registration and login ceremonies; see the module docstring for the invariants.

    ``wait_durable(offset)``, if given, is awaited before a ceremony answers, so a client
    never holds a token whose passkey or counter update could be lost (the server passes
    ``Hub.wait_durable``). Pending ceremonies live in memory and are lost on restart.
    """

    def __init__(
        self,
        auth: AuthServiceProtocol,
        db: Database,
        *,
        wait_durable: Callable[[int], Awaitable[None]] | None = None,
        ceremony_ttl_s: float = 300.0,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        require_user_verification: bool = False,
    ) -> None:
        self.auth = auth
        self.db = db
        self.store = PasskeyStore(db)
        self.ceremonies = CeremonyStore(ceremony_ttl_s, max_pending, clock)
        self.wait_durable = wait_durable
        self.require_user_verification = require_user_verification
        self._timeout_ms = round(ceremony_ttl_s * 1000)

    # ---- helpers

    def _logged_in(self, authorization: str | None) -> str | None:
        """The caller's identity; None without credentials; a bad token is refused."""
        if not authorization:
            return None
        p = self.auth.principal(authorization)
        if p.kind == "anonymous":
            raise ApiError("unauthorized", "the bearer token is not valid; log in again")
        return p.identity

    def _refuse(
        self,
        event: str,
        remote: str | None,
        identity: str | None,
        reason: str,
        message: str | None = None,
        **detail: Any,
    ) -> ApiError:
        """Audit a refused ceremony and return the error to raise."""
        self.auth.audit(event, identity, METHOD, False, {"reason": reason, **detail}, remote)
        text = message or REASONS[reason]
        log.info("%s refused (%s): %s", event, reason, text)
        return ApiError(PASSKEY_INVALID, text)

    def _issue(
        self, event: str, identity: str, remote: str | None, detail: dict[str, Any]
    ) -> dict[str, Any]:
        """A token for ``identity``, auditing the outcome (a refusal keeps its own code)."""
        try:
            token = self.auth.issue_token(identity, METHOD, remote)
        except ApiError as e:
            self.auth.audit(event, identity, METHOD, False, {"reason": e.code, **detail}, remote)
            raise
        self.auth.audit(event, identity, METHOD, True, detail, remote)
        return token

    async def _durable(self) -> None:
        if self.wait_durable is not None:
            await self.wait_durable(self.db.offset)

    # ---- registration

    def register_options(
        self,
        authorization: str | None = None,
        display_name: str | None = None,
        email: str | None = None,
    ) -> dict[str, Any]:
        """Start a registration: ``{"ceremony", "options"}`` (creation options as JSON).

        With the bearer token of a logged-in identity the passkey will be added to that
        identity (its passkeys are excluded, its user handle reused); without one, the
        verify step creates a new human identity.
        """
        identity = self._logged_in(authorization)
        existing = [] if identity is None else self.store.for_identity(identity)
        user_handle = existing[0].user_handle if existing else secrets.token_bytes(32)
        fallback = "passkey user" if identity is None else f"voicehub {identity[:12]}"
        user_name = email or display_name or fallback
        shown = display_name or email or fallback
        rp = self.auth.settings
        options = generate_registration_options(
            rp_id=rp.rp_id,
            rp_name=rp.rp_name,
            user_name=user_name,
            user_id=user_handle,
            user_display_name=shown,
            timeout=self._timeout_ms,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[_descriptor(r) for r in existing],
            supported_pub_key_algs=ALGORITHMS,
        )
        cid = self.ceremonies.put(
            "register", options.challenge, identity, user_handle, shown, email
        )
        return {"ceremony": cid, "options": options_to_json_dict(options)}

    async def register_verify(
        self,
        ceremony: str,
        credential: dict[str, Any],
        authorization: str | None = None,
        remote: str | None = None,
    ) -> dict[str, Any]:
        """Finish a registration: store the passkey and return ``{identity, token, ...}``."""
        ev = REGISTER_EVENT
        try:
            c = self.ceremonies.take(ceremony, "register")
        except CeremonyError as e:
            raise self._refuse(ev, remote, None, e.reason, e.message) from None
        if c.identity is not None and self._logged_in(authorization) != c.identity:
            raise self._refuse(ev, remote, c.identity, "other_session")
        try:
            parsed = parse_registration_credential_json(credential)
        except Exception as e:
            raise self._refuse(ev, remote, c.identity, "malformed", _why(e)) from None
        rp = self.auth.settings
        try:
            verified = await asyncio.to_thread(
                verify_registration_response,
                credential=parsed,
                expected_challenge=c.challenge,
                expected_rp_id=rp.rp_id,
                expected_origin=rp.rp_origin,
                require_user_verification=self.require_user_verification,
                supported_pub_key_algs=ALGORITHMS,
            )
        except Exception as e:
            raise self._refuse(ev, remote, c.identity, "verification_failed", _why(e)) from None
        # From here to the commit there is no await: the duplicate check holds.
        cred_b64 = _b64(verified.credential_id)
        if self.store.get(verified.credential_id) is not None:
            raise self._refuse(ev, remote, c.identity, "already_registered", credential_id=cred_b64)
        identity = c.identity
        if identity is None:
            identity = self.auth.create_identity(HUMAN, c.display_name, c.email)
        transports = [t.value for t in parsed.response.transports or []]
        self.store.add(
            verified.credential_id,
            identity,
            c.user_handle,
            verified.credential_public_key,
            verified.sign_count,
            transports,
            verified.aaguid,
        )
        detail = {
            "credential_id": cred_b64,
            "aaguid": verified.aaguid,
            "fmt": getattr(verified.fmt, "value", verified.fmt),  # py_webauthn gives a str
            "new_identity": c.identity is None,
        }
        token = self._issue(ev, identity, remote, detail)
        await self._durable()
        return {**token, "identity": identity, "credential_id": cred_b64}

    # ---- login

    def login_options(self, identity: str | None = None) -> dict[str, Any]:
        """Start a login: discoverable (no identity) or limited to one identity's passkeys.

        An identity without passkeys gets the same answer shape (an empty allow list), so
        the options do not reveal whether it has any; its verify step then fails.
        """
        allow = (
            [] if identity is None else [_descriptor(r) for r in self.store.for_identity(identity)]
        )
        options = generate_authentication_options(
            rp_id=self.auth.settings.rp_id,
            timeout=self._timeout_ms,
            allow_credentials=allow,
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        cid = self.ceremonies.put("login", options.challenge, identity)
        return {"ceremony": cid, "options": options_to_json_dict(options)}

    async def login_verify(
        self, ceremony: str, credential: dict[str, Any], remote: str | None = None
    ) -> dict[str, Any]:
        """Finish a login: check the assertion and counter, return ``{identity, token, ...}``."""
        ev = LOGIN_EVENT
        try:
            c = self.ceremonies.take(ceremony, "login")
        except CeremonyError as e:
            raise self._refuse(ev, remote, None, e.reason, e.message) from None
        try:
            parsed = parse_authentication_credential_json(credential)
        except Exception as e:
            raise self._refuse(ev, remote, c.identity, "malformed", _why(e)) from None
        cred_b64 = _b64(parsed.raw_id)
        row = self.store.get(parsed.raw_id)
        if row is None:
            raise self._refuse(ev, remote, c.identity, "unknown_credential", credential_id=cred_b64)
        if c.identity is not None and row.identity != c.identity:
            raise self._refuse(ev, remote, c.identity, "not_allowed", credential_id=cred_b64)
        handle = parsed.response.user_handle
        if handle is not None and handle != row.user_handle:
            raise self._refuse(
                ev, remote, row.identity, "user_handle_mismatch", credential_id=cred_b64
            )
        rp = self.auth.settings
        try:
            # the counter is checked below, against the row as it is after the await
            verified = await asyncio.to_thread(
                verify_authentication_response,
                credential=parsed,
                expected_challenge=c.challenge,
                expected_rp_id=rp.rp_id,
                expected_origin=rp.rp_origin,
                credential_public_key=row.public_key,
                credential_current_sign_count=0,
                require_user_verification=self.require_user_verification,
            )
        except Exception as e:
            raise self._refuse(
                ev, remote, row.identity, "verification_failed", _why(e), credential_id=cred_b64
            ) from None
        # From here to the counter's commit there is no await.
        now = self.store.get(parsed.raw_id)
        if now is None or now.public_key != row.public_key:  # removed (and re-added) meanwhile
            raise self._refuse(
                ev, remote, row.identity, "unknown_credential", credential_id=cred_b64
            )
        if counter_regressed(now.sign_count, verified.new_sign_count):
            raise self._refuse(
                ev,
                remote,
                now.identity,
                "counter_regression",
                credential_id=cred_b64,
                stored_count=now.sign_count,
                presented_count=verified.new_sign_count,
            )
        self.store.used(now.credential_id, verified.new_sign_count)
        detail = {"credential_id": cred_b64, "user_verified": verified.user_verified}
        token = self._issue(ev, now.identity, remote, detail)
        await self._durable()
        return {**token, "identity": now.identity, "credential_id": cred_b64}

    # ---- management

    def list_passkeys(self, authorization: str | None) -> list[dict[str, Any]]:
        """The caller's passkeys (never their keys): id, transports, aaguid, counter, times."""
        identity = self._logged_in(authorization)
        if identity is None:
            raise ApiError("unauthorized", "log in to list your passkeys")
        return [
            {
                "credential_id": _b64(r.credential_id),
                "transports": r.transports,
                "aaguid": r.aaguid,
                "sign_count": r.sign_count,
                "created_at": r.created_at,
                "last_used_at": r.last_used_at,
            }
            for r in self.store.for_identity(identity)
        ]

    async def remove_passkey(
        self, authorization: str | None, credential_id: str, remote: str | None = None
    ) -> dict[str, Any]:
        """Delete one of the caller's passkeys (by its base64url id)."""
        identity = self._logged_in(authorization)
        if identity is None:
            raise ApiError("unauthorized", "log in to remove a passkey")
        try:
            raw = base64url_to_bytes(credential_id)
        except Exception:
            raise ApiError("invalid_request", "the credential id is not base64url") from None
        row = self.store.get(raw)
        if row is None or row.identity != identity:
            raise ApiError("not_found", "you have no passkey with this id")
        removed, _ = self.store.remove(raw)
        self.auth.audit(
            REMOVE_EVENT, identity, METHOD, removed, {"credential_id": credential_id}, remote
        )
        await self._durable()
        return {"removed": removed, "credential_id": credential_id}


# ---------------------------------------------------------------- HTTP

_CREDENTIAL_FIELDS = frozenset({"ceremony", "credential"})


def _text(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > limit:
        raise ApiError("invalid_request", f"{name} must be a non-empty string of at most {limit}")
    return v.strip()


def _credential(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ceremony = _text(body, "ceremony", 256, required=True)
    cred = body.get("credential")
    if not isinstance(cred, dict):
        raise ApiError("invalid_request", "credential must be the PublicKeyCredential JSON")
    assert ceremony is not None
    return ceremony, cred


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


Handler = Callable[[Request], Awaitable[Any]]


def _endpoint(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            out = await fn(request)
        except Exception as e:
            return error_response(e)
        return json_response(out)

    return run


def passkey_routes(get_service: Callable[[Request], PasskeyService]) -> list[Route]:
    """The passkey endpoints (JSON in and out, errors as ``{"error": {code, message}}``)."""

    async def register_options(request: Request) -> Any:
        body = await read_object(request, frozenset({"display_name", "email"}))
        return get_service(request).register_options(
            request.headers.get("authorization"),
            _text(body, "display_name", 200),
            _text(body, "email", 320),
        )

    async def register_verify(request: Request) -> Any:
        ceremony, cred = _credential(
            await read_object(request, frozenset({"ceremony", "credential"}))
        )
        return await get_service(request).register_verify(
            ceremony, cred, request.headers.get("authorization"), _remote(request)
        )

    async def login_options(request: Request) -> Any:
        body = await read_object(request, frozenset({"identity"}))
        return get_service(request).login_options(_text(body, "identity", 256))

    async def login_verify(request: Request) -> Any:
        ceremony, cred = _credential(
            await read_object(request, frozenset({"ceremony", "credential"}))
        )
        return await get_service(request).login_verify(ceremony, cred, _remote(request))

    async def list_credentials(request: Request) -> Any:
        items = get_service(request).list_passkeys(request.headers.get("authorization"))
        return {"passkeys": items}

    async def remove_credential(request: Request) -> Any:
        return await get_service(request).remove_passkey(
            request.headers.get("authorization"),
            request.path_params["credential_id"],
            _remote(request),
        )

    p = "/v1/auth/passkey"
    return [
        Route(f"{p}/register/options", _endpoint(register_options), methods=["POST"]),
        Route(f"{p}/register/verify", _endpoint(register_verify), methods=["POST"]),
        Route(f"{p}/login/options", _endpoint(login_options), methods=["POST"]),
        Route(f"{p}/login/verify", _endpoint(login_verify), methods=["POST"]),
        Route(f"{p}/credentials", _endpoint(list_credentials), methods=["GET"]),
        Route(
            f"{p}/credentials/{{credential_id}}",
            _endpoint(remove_credential),
            methods=["DELETE"],
        ),
    ]
