"""Master keys and per-recording data keys for encrypted call recordings.

A ``Keyring`` holds master keys by id (loaded from ``<data_dir>/recording-master.key``,
created with mode 0600 on first use, never overwritten in place). Each recording gets a
fresh random 256-bit data key, wrapped (AES-256-GCM) under the keyring's *active* master
key; the result is a ``KeyRecord`` row the caller stores in the database.

Invariant: a data key never leaves this module unwrapped except to the caller that asked
for it, and a wrapped key only unwraps under the master key it names and only for the
``key_id`` it was made for (the key id and master id are the AEAD's associated data), so a
wrapped key copied onto another recording or into another key row fails to unwrap.
Destroying every copy of a ``KeyRecord`` (the row, and the copy in the file header, see
``media.recorder.shred``) - or the master key itself - makes the recording unreadable.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("voicehub.media.keys")

MASTER_KEY_FILE = "recording-master.key"
"""The keyring file's name inside the data directory."""
KEY_BYTES = 32
WRAPPED_KEY_BYTES = 12 + KEY_BYTES + 16  # nonce | ciphertext | GCM tag
MAX_MASTER_ID = 48
_MASTER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")
_WRAP_AAD = b"voicehub recording data key v1\x00"
_FILE_HEADER = (
    "# voicehub recording master keys: '<id> <base64url key>' per line.\n"
    "# The last key is the active one (new recordings); older ones only unwrap.\n"
)


class KeyringError(Exception):
    """A key is missing, malformed, or does not unwrap (wrong master key)."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A recording's data key wrapped under a master key: the row the database stores."""

    key_id: str
    master_key_id: str
    wrapped_key: bytes = field(repr=False)


def _check_master_id(master_id: str) -> str:
    if not _MASTER_ID.match(master_id):
        raise KeyringError(f"invalid master key id {master_id!r} (1-48 of [A-Za-z0-9_.-])")
    return master_id


def _wrap_aad(key_id: str, master_id: str) -> bytes:
    return _WRAP_AAD + key_id.encode() + b"\x00" + master_id.encode()


def new_master_id() -> str:
    return "mk-" + secrets.token_hex(6)


class Keyring:
    """Master keys by id; the active one wraps new data keys, every one can unwrap."""

    def __init__(self, masters: Mapping[str, bytes], active: str | None = None) -> None:
        if not masters:
            raise KeyringError("a keyring needs at least one master key")
        for mid, key in masters.items():
            _check_master_id(mid)
            if len(key) != KEY_BYTES:
                raise KeyringError(f"master key {mid!r} must be {KEY_BYTES} bytes")
        self._masters = dict(masters)
        self.active_id = active if active is not None else list(self._masters)[-1]
        if self.active_id not in self._masters:
            raise KeyringError(f"active master key {self.active_id!r} is not in the keyring")
        self._aead = {mid: AESGCM(key) for mid, key in self._masters.items()}

    # ------------------------------------------------------------ construction

    @classmethod
    def generate(cls, master_id: str | None = None) -> Keyring:
        """A keyring with one fresh in-memory master key (tests, tools)."""
        return cls({master_id or new_master_id(): AESGCM.generate_key(256)})

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Parse a keyring file (see ``_FILE_HEADER``); the last key is active."""
        masters: dict[str, bytes] = {}
        for n, raw in enumerate(Path(path).read_text("ascii").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise KeyringError(f"{path}:{n}: expected '<id> <base64url key>'")
            mid = _check_master_id(parts[0])
            try:
                key = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
            except ValueError:
                raise KeyringError(f"{path}:{n}: key is not base64url") from None
            if len(key) != KEY_BYTES or mid in masters:
                raise KeyringError(f"{path}:{n}: bad or duplicate key {mid!r}")
            masters[mid] = key
        if not masters:
            raise KeyringError(f"{path} holds no master key")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            log.warning("%s is readable by others (mode %o); it should be 0600", path, mode)
        return cls(masters)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Keyring:
        """``<data_dir>/recording-master.key``, created (0600, one fresh key) if absent."""
        path = Path(data_dir) / MASTER_KEY_FILE
        if not path.exists():
            try:
                _write_new(path, {new_master_id(): AESGCM.generate_key(256)})
            except FileExistsError:
                pass  # created meanwhile: use that one
        return cls.load(path)

    def rotate(self, data_dir: Path, master_id: str | None = None) -> str:
        """Add a fresh master key, make it active, and persist the keyring (atomic rename).

        Older master keys stay so existing recordings remain readable; retire one only after
        every key row wrapped under it was ``rewrap``-ped (and the file headers shredded or
        accepted as unreadable without the database row).
        """
        mid = _check_master_id(master_id or new_master_id())
        if mid in self._masters:
            raise KeyringError(f"master key id {mid!r} already exists")
        masters = {**self._masters, mid: AESGCM.generate_key(256)}
        path = Path(data_dir) / MASTER_KEY_FILE
        tmp = path.with_name(f".{MASTER_KEY_FILE}.tmp-{secrets.token_hex(4)}")
        _write_new(tmp, masters)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        self._masters = masters
        self._aead[mid] = AESGCM(masters[mid])
        self.active_id = mid
        return mid

    # ------------------------------------------------------------ keys

    @property
    def master_ids(self) -> tuple[str, ...]:
        return tuple(self._masters)

    def new_data_key(self) -> tuple[bytes, KeyRecord]:
        """A fresh random data key and its ``KeyRecord`` under the active master key."""
        data_key = AESGCM.generate_key(256)
        key_id = "rk-" + secrets.token_hex(12)
        return data_key, self.wrap(data_key, key_id)

    def wrap(self, data_key: bytes, key_id: str, master_id: str | None = None) -> KeyRecord:
        mid = master_id or self.active_id
        aead = self._aead.get(mid)
        if aead is None:
            raise KeyringError(f"unknown master key id {mid!r}")
        nonce = secrets.token_bytes(12)
        wrapped = nonce + aead.encrypt(nonce, data_key, _wrap_aad(key_id, mid))
        return KeyRecord(key_id, mid, wrapped)

    def unwrap(self, record: KeyRecord) -> bytes:
        """The data key of ``record``; ``KeyringError`` if its master key is absent or wrong."""
        aead = self._aead.get(record.master_key_id)
        if aead is None:
            raise KeyringError(
                f"key {record.key_id}: master key {record.master_key_id!r} is not in the "
                f"keyring (have {', '.join(self._masters)})"
            )
        w = record.wrapped_key
        if len(w) != WRAPPED_KEY_BYTES or not any(w):
            raise KeyringError(f"key {record.key_id}: wrapped key is missing or shredded")
        try:
            return aead.decrypt(w[:12], w[12:], _wrap_aad(record.key_id, record.master_key_id))
        except InvalidTag:
            raise KeyringError(
                f"key {record.key_id}: master key {record.master_key_id!r} does not unwrap it "
                "(wrong master key, or the wrapped key belongs to another key id)"
            ) from None

    def rewrap(self, record: KeyRecord) -> KeyRecord:
        """The same data key wrapped under the active master key (for master rotation)."""
        return self.wrap(self.unwrap(record), record.key_id)


def _write_new(path: Path, masters: Mapping[str, bytes]) -> None:
    """Create ``path`` 0600 (never overwriting), write the keys, fsync file and directory."""
    body = _FILE_HEADER + "".join(
        f"{mid} {base64.urlsafe_b64encode(key).decode().rstrip('=')}\n"
        for mid, key in masters.items()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
