"""A software WebAuthn authenticator for tests: real attestations and assertions, as JSON.

``SoftAuthenticator`` plays both the authenticator and the browser around it. Given the
options a relying party returned (the JSON of ``options_to_json``), ``create`` makes a new
key pair and returns what ``PublicKeyCredential.toJSON()`` returns after
``navigator.credentials.create()``; ``get`` signs an assertion and returns the JSON of
``navigator.credentials.get()``. Everything is genuine: clientDataJSON, authenticatorData
(rpIdHash, flags, big-endian signCount, attested credential data with AAGUID, credential
id and a COSE key), a CBOR attestationObject with ``packed`` self-attestation (the
credential key signs ``authData || sha256(clientDataJSON)``) or ``none``, and ECDSA P-256
(ES256) or Ed25519 (EdDSA) signatures. Binary fields are base64url without padding.

Invariant: unless a test asks for a fault (``origin=``, ``rp_id=``, ``tamper=``,
``sign_count=``, or a ``clone()``), every object it produces is one a conforming
authenticator in a conforming browser could produce, and each credential's counter
increases by one per assertion.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, replace
from typing import Any, Literal

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_BE = 0x08
FLAG_BS = 0x10
FLAG_AT = 0x40

ES256 = -7
EDDSA = -8

SOFT_AAGUID = bytes.fromhex("5f0f7e1a9c3b4d2e8a6b1c0d2e3f4a5b")
"""The AAGUID this authenticator reports (a made-up model id)."""

Fmt = Literal["packed", "none"]
Tamper = Literal["signature", "authenticator_data", "client_data"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(b: bytes) -> str:
    return bytes_to_base64url(b)


def _flip_last(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 0x01])


@dataclass
class SoftCredential:
    """One credential (a resident key): its private key, owner and counter."""

    credential_id: bytes
    rp_id: str
    user_handle: bytes
    alg: int
    private_key: PrivateKey
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        """The credential public key as a COSE_Key (CTAP2 canonical key order)."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            n = self.private_key.public_key().public_numbers()
            key: dict[int, Any] = {
                1: 2,  # kty: EC2
                3: ES256,  # alg
                -1: 1,  # crv: P-256
                -2: n.x.to_bytes(32, "big"),
                -3: n.y.to_bytes(32, "big"),
            }
        else:
            raw = self.private_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            key = {1: 1, 3: EDDSA, -1: 6, -2: raw}  # kty OKP, crv Ed25519
        return cbor2.dumps(key)

    def spki(self) -> bytes:
        """The public key as DER SubjectPublicKeyInfo (``response.publicKey`` in toJSON)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER, as WebAuthn
        return self.private_key.sign(data)


class SoftAuthenticator:
    """A platform authenticator holding resident keys for any number of RPs.

    ``origin`` is the web origin the simulated browser runs on; ``counter=False`` models
    an authenticator that keeps no signature counter (it always reports 0).
    """

    def __init__(
        self,
        origin: str,
        *,
        fmt: Fmt = "packed",
        alg: int = ES256,
        aaguid: bytes = SOFT_AAGUID,
        user_verified: bool = True,
        counter: bool = True,
        transports: tuple[str, ...] = ("internal", "hybrid"),
    ) -> None:
        if alg not in (ES256, EDDSA):
            raise ValueError("the soft authenticator supports ES256 (-7) and EdDSA (-8)")
        self.origin = origin
        self.fmt: Fmt = fmt
        self.alg = alg
        self.aaguid = aaguid
        self.user_verified = user_verified
        self.counter = counter
        self.transports = transports
        self.credentials: dict[bytes, SoftCredential] = {}

    # ---- pieces

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        data = {
            "type": kind,
            "challenge": challenge,
            "origin": origin or self.origin,
            "crossOrigin": False,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def _auth_data(
        self, rp_id: str, flags: int, sign_count: int, attested: SoftCredential | None = None
    ) -> bytes:
        out = hashlib.sha256(rp_id.encode()).digest() + bytes([flags])
        out += struct.pack(">I", sign_count)
        if attested is not None:
            cid = attested.credential_id
            out += self.aaguid + struct.pack(">H", len(cid)) + cid + attested.cose_public_key()
        return out

    def _flags(self, attested: bool) -> int:
        f = FLAG_UP | (FLAG_UV if self.user_verified else 0)
        return f | FLAG_AT if attested else f

    def _new_key(self) -> PrivateKey:
        if self.alg == ES256:
            return ec.generate_private_key(ec.SECP256R1())
        return ed25519.Ed25519PrivateKey.generate()

    # ---- navigator.credentials.create()

    def create(
        self,
        options: dict[str, Any],
        *,
        fmt: Fmt | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        tamper: Tamper | None = None,
    ) -> dict[str, Any]:
        """Register a new credential for ``options`` (PublicKeyCredentialCreationOptionsJSON).

        ``origin``/``rp_id`` override what the browser and the authenticator would use
        (a phishing page, a wrong RP); ``tamper`` corrupts the result after signing.
        Raises ``ValueError`` if the authenticator already holds an excluded credential
        (the browser's InvalidStateError) or supports none of the offered algorithms.
        """
        excluded = {base64url_to_bytes(d["id"]) for d in options.get("excludeCredentials", [])}
        if excluded & set(self.credentials):
            raise ValueError("InvalidStateError: this authenticator is already registered")
        if not any(p.get("alg") == self.alg for p in options["pubKeyCredParams"]):
            raise ValueError("NotSupportedError: no offered algorithm is supported")
        rp = rp_id or options["rp"].get("id") or ""
        cred = SoftCredential(
            credential_id=os.urandom(32),
            rp_id=options["rp"].get("id") or rp,
            user_handle=base64url_to_bytes(options["user"]["id"]),
            alg=self.alg,
            private_key=self._new_key(),
        )
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        auth_data = self._auth_data(rp, self._flags(True), cred.sign_count, cred)
        fmt = fmt or self.fmt
        stmt: dict[str, Any] = {}
        if fmt == "packed":
            sig = cred.sign(auth_data + hashlib.sha256(client_data).digest())
            stmt = {"alg": self.alg, "sig": _flip_last(sig) if tamper == "signature" else sig}
        if tamper == "authenticator_data":
            auth_data = auth_data[:32] + bytes([auth_data[32] | FLAG_BE]) + auth_data[33:]
        if tamper == "client_data":
            client_data = client_data.replace(b'"crossOrigin":false', b'"crossOrigin":true')
        attestation = cbor2.dumps({"fmt": fmt, "attStmt": stmt, "authData": auth_data})
        self.credentials[cred.credential_id] = cred
        return {
            "id": b64(cred.credential_id),
            "rawId": b64(cred.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64(client_data),
                "attestationObject": b64(attestation),
                "authenticatorData": b64(auth_data),
                "transports": list(self.transports),
                "publicKeyAlgorithm": self.alg,
                "publicKey": b64(cred.spki()),
            },
        }

    # ---- navigator.credentials.get()

    def _pick(self, options: dict[str, Any], credential_id: bytes | None) -> SoftCredential:
        if credential_id is not None:
            return self.credentials[credential_id]
        rp = options.get("rpId") or ""
        allowed = [base64url_to_bytes(d["id"]) for d in options.get("allowCredentials", [])]
        mine = [c for c in self.credentials.values() if c.rp_id == rp]
        if allowed:
            mine = [c for c in mine if c.credential_id in allowed]
        if not mine:
            raise LookupError("NotAllowedError: no credential for this request")
        return mine[-1]

    def get(
        self,
        options: dict[str, Any],
        *,
        credential_id: bytes | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        tamper: Tamper | None = None,
        sign_count: int | None = None,
        user_handle: bool = True,
    ) -> dict[str, Any]:
        """Sign an assertion for ``options`` (PublicKeyCredentialRequestOptionsJSON).

        Picks ``credential_id`` or the newest allowed (or, without an allow list,
        discoverable) credential for the RP. The counter advances by one unless
        ``sign_count`` forces a value (a replayed or cloned authenticator's counter).
        """
        cred = self._pick(options, credential_id)
        if sign_count is not None:
            count = sign_count
        elif self.counter:
            cred.sign_count += 1
            count = cred.sign_count
        else:
            count = 0
        rp = rp_id or options.get("rpId") or cred.rp_id
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        auth_data = self._auth_data(rp, self._flags(False), count)
        sig = cred.sign(auth_data + hashlib.sha256(client_data).digest())
        if tamper == "signature":
            sig = _flip_last(sig)
        elif tamper == "authenticator_data":
            auth_data = auth_data[:33] + struct.pack(">I", count + 1000)
        elif tamper == "client_data":
            client_data = client_data.replace(b'"crossOrigin":false', b'"crossOrigin":true')
        response: dict[str, Any] = {
            "clientDataJSON": b64(client_data),
            "authenticatorData": b64(auth_data),
            "signature": b64(sig),
        }
        if user_handle:
            response["userHandle"] = b64(cred.user_handle)
        return {
            "id": b64(cred.credential_id),
            "rawId": b64(cred.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": response,
        }

    # ---- faults

    def clone(self) -> SoftAuthenticator:
        """A copy holding the same keys and *current* counters (an extracted authenticator).

        Once the original has been used again, the copy's next assertion carries a
        counter that did not increase over what the relying party last saw.
        """
        twin = SoftAuthenticator(
            self.origin,
            fmt=self.fmt,
            alg=self.alg,
            aaguid=self.aaguid,
            user_verified=self.user_verified,
            counter=self.counter,
            transports=self.transports,
        )
        twin.credentials = {k: replace(c) for k, c in self.credentials.items()}
        return twin
