"""Recording keyring: key file 0600, rotation across master ids, wrong keys refused."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
from test_recorder import record_call

from media.keys import MASTER_KEY_FILE, KeyRecord
from media.recorder import Keyring, KeyringError, export_wav, verify


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    kr = Keyring.load_or_create(tmp_path)
    path = tmp_path / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    again = Keyring.load_or_create(tmp_path)  # a restart: same key, file untouched
    assert path.read_bytes() == before and again.master_ids == kr.master_ids
    data_key, rec = kr.new_data_key()
    assert again.unwrap(rec) == data_key and len(data_key) == 32
    assert data_key not in path.read_bytes() and data_key not in rec.wrapped_key
    other_key, other = kr.new_data_key()
    assert other_key != data_key and other.key_id != rec.key_id


def test_rotation_keeps_old_recordings_readable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    kr = Keyring.load_or_create(data)
    old_id = kr.active_id
    old_done, _ = record_call(tmp_path / "rec", kr, recording_id=1)
    new_id = kr.rotate(data, "mk-2")
    assert new_id == "mk-2" and kr.active_id == "mk-2" and kr.master_ids == (old_id, "mk-2")
    assert stat.S_IMODE((data / MASTER_KEY_FILE).stat().st_mode) == 0o600
    assert not list(data.glob(".*tmp*"))
    new_done, _ = record_call(tmp_path / "rec", kr, recording_id=2)
    assert old_done.key_record.master_key_id == old_id
    assert new_done.key_record.master_key_id == "mk-2"

    reloaded = Keyring.load_or_create(data)  # after a restart: both masters, new one active
    assert reloaded.master_ids == (old_id, "mk-2") and reloaded.active_id == "mk-2"
    for done in (old_done, new_done):
        export_wav(tmp_path / "rec" / done.storage_uri, reloaded, tmp_path / "x.wav")
    # rewrapping the old row moves it to the new master; the old master can then go
    moved = reloaded.rewrap(old_done.key_record)
    assert moved.master_key_id == "mk-2" and moved.key_id == old_done.key_record.key_id
    only_new = Keyring({"mk-2": _master(reloaded, "mk-2")})
    with pytest.raises(KeyringError, match="not in the keyring"):
        verify(tmp_path / "rec" / old_done.storage_uri, only_new)
    verify(tmp_path / "rec" / old_done.storage_uri, only_new, key_record=moved)
    with pytest.raises(KeyringError, match="already exists"):
        kr.rotate(data, "mk-2")


def _master(kr: Keyring, mid: str) -> bytes:
    return kr._masters[mid]


def test_wrong_master_key_is_refused(tmp_path: Path) -> None:
    kr = Keyring.generate("mk-a")
    done, _ = record_call(tmp_path / "rec", kr)
    impostor = Keyring({"mk-a": bytes(32)})  # same id, different key
    with pytest.raises(KeyringError, match="wrong master key"):
        impostor.unwrap(done.key_record)
    with pytest.raises(KeyringError, match="wrong master key"):
        export_wav(tmp_path / "rec" / done.storage_uri, impostor, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()
    # a wrapped key presented under another key id does not unwrap either
    with pytest.raises(KeyringError, match="another key id"):
        kr.unwrap(replace(done.key_record, key_id="rk-other"))
    with pytest.raises(KeyringError, match="shredded"):
        kr.unwrap(KeyRecord(done.key_id, "mk-a", bytes(60)))


def test_malformed_key_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / MASTER_KEY_FILE
    for body in ("", "# only a comment\n", "mk-1 c2hvcnQ\n", "bad id! AAAA\n", "a b c\n"):
        path.write_text(body)
        with pytest.raises(KeyringError):
            Keyring.load(path)
    with pytest.raises(KeyringError):
        Keyring({"mk-1": b"short"})
    with pytest.raises(KeyringError):
        Keyring({})
