"""The Piper TTS worker process: ``python -m media.speech.piper_worker SETTINGS_JSON``.

Piper (piper-tts, GPL-3.0) runs only here, in a child process, so voicehub's own process
never imports it; the parent (``media.speech.tts.PiperTts``) talks to this one over pipes.
Requests: one JSON line each on stdin (``{"text": ...}``; ``{"op": "quit"}`` ends it).
Replies on the original stdout, framed as 1 tag byte + 4-byte big-endian length + payload:
``R`` ready (JSON: sample rate, load time), ``A`` a chunk of canonical 16 kHz s16le PCM (one
per sentence, as soon as it is synthesized), ``E`` end of a request (JSON timings), ``X``
an error (UTF-8 text, the request is over). Invariant: every request gets exactly one
``E`` or ``X``, after all of its ``A`` chunks; synthesis is deterministic (no noise).
Anything a library prints goes to stderr, never into the framed stream.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import sys
import time
from typing import Any, BinaryIO

OUT_RATE = 16000


def _send(out: BinaryIO, tag: bytes, payload: bytes) -> None:
    out.write(tag + struct.pack(">I", len(payload)) + payload)
    out.flush()


class _Resample:
    """Voice rate -> 16 kHz, streaming: soxr (HQ) when installed, else audioop.ratecv."""

    def __init__(self, in_rate: int) -> None:
        self.in_rate = in_rate
        self._soxr: Any = None
        self._state: Any = None
        if in_rate != OUT_RATE:
            try:
                soxr = importlib.import_module("soxr")
                self._soxr = soxr.ResampleStream(in_rate, OUT_RATE, 1, dtype="int16", quality="HQ")
            except ImportError:
                self._soxr = None

    def chunk(self, pcm: bytes, last: bool) -> bytes:
        if self.in_rate == OUT_RATE:
            return pcm
        if self._soxr is not None:
            np = importlib.import_module("numpy")
            x = np.frombuffer(pcm, dtype=np.int16)
            return bytes(self._soxr.resample_chunk(x, last=last).tobytes())
        import audioop

        out, self._state = audioop.ratecv(pcm, 2, 1, self.in_rate, OUT_RATE, self._state)
        return out


def main(argv: list[str]) -> int:
    settings: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}
    # the framed protocol owns the real stdout; fd 1 becomes stderr for chatty libraries
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    try:
        onnxruntime = importlib.import_module("onnxruntime")
        piper = importlib.import_module("piper")
        piper_config = importlib.import_module("piper.config")

        with open(settings["config"], encoding="utf-8") as f:
            config = piper_config.PiperConfig.from_dict(json.load(f))
        opts = onnxruntime.SessionOptions()
        threads = int(settings.get("threads") or 0)
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(settings["model"]), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        voice = piper.PiperVoice(session=session, config=config)
        syn = piper.SynthesisConfig(
            length_scale=float(settings.get("length_scale", 1.0)),
            noise_scale=float(settings.get("noise_scale", 0.0)),
            noise_w_scale=float(settings.get("noise_w_scale", 0.0)),
            normalize_audio=True,
            volume=float(settings.get("volume", 1.0)),
        )
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in voice.synthesize("Ready.", syn):  # warm the session (first run is slow)
            pass
        warm_s = time.perf_counter() - t1
    except Exception as e:
        _send(out, b"X", f"piper worker failed to load: {type(e).__name__}: {e}".encode())
        return 1
    ready = {"sample_rate": config.sample_rate, "load_s": load_s, "warm_s": warm_s}
    _send(out, b"R", json.dumps(ready).encode())

    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            _send(out, b"X", f"bad request: {e}".encode())
            continue
        if req.get("op") == "quit":
            break
        text = str(req.get("text", ""))
        t_req = time.perf_counter()
        first_s: float | None = None
        samples = 0
        try:
            rs = _Resample(config.sample_rate)
            for chunk in voice.synthesize(text, syn):
                pcm = rs.chunk(chunk.audio_int16_bytes, last=False)
                if pcm:
                    if first_s is None:
                        first_s = time.perf_counter() - t_req
                    samples += len(pcm) // 2
                    _send(out, b"A", pcm)
            tail = rs.chunk(b"", last=True)
            if tail:
                samples += len(tail) // 2
                _send(out, b"A", tail)
        except Exception as e:
            _send(out, b"X", f"synthesis failed: {type(e).__name__}: {e}".encode())
            continue
        stats = {"first_s": first_s, "total_s": time.perf_counter() - t_req, "samples": samples}
        _send(out, b"E", json.dumps(stats).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
