"""Benchmarks of the offline speech engines (``media/speech``) on this machine.

    .venv/bin/python bench/speech_bench.py [--quick] [--check] [-v] [--calls N]

1. VAD: webrtc frames per second on one thread (the event loop runs it for every call).
2. Partials: pocketsphinx real-time factor (CPU seconds per audio second) over phone-line
   audio (Piper speech -> μ-law 8 kHz -> 16 kHz), and the concurrent speaking callers two
   cores could keep up with.
3. Finals: whisper tiny.en (int8, fitted encoder window) decode time per utterance and its
   real-time factor.
4. The pool in real time: N calls (default 10; staggered starts) push phone-line audio
   paced at 20 ms per frame through ``SpeechPool``; end of speech -> Final p50/p90 (the
   segmenter's hangover included), partial audio shed, the event loop's lag.
5. TTS: Piper (worker process) time to first audio and real-time factor, direct and via
   ``SpeechPool.say`` (the `say` -> first outbound audio path).

Targets from the product: >= 10 concurrent calls with streaming STT; end of speech ->
final transcript p50 <= 700 ms; `say` -> first outbound audio p50 <= 250 ms. Progress goes
to stderr; stdout gets a table and, as its last line, one line of JSON with every figure
and its target. ``--quick`` (fewer repetitions, one round of the pool) runs in < 1 minute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import Report, base_parser, environment, finish, percentile, phase, setup_logging
from media.speech import Engines, SegmenterConfig, SpeechConfig, build_engines
from media.speech.base import FRAME_BYTES, pcm_ms
from media.speech.worker import PoolLimits, SpeechPool
from providers.codecs import Decoder, Encoder

log = logging.getLogger("voicehub.bench")

CALLER_LINES = [
    "yes I agree to the recording of this call",
    "no I don't agree",
    "I would like to book an appointment for next Tuesday at three pm",
    "can you tell me my account balance please",
]
AGENT_LINES = [
    "Thanks for calling. How can I help you today?",
    "Sure. I can book that for you. Which day works best?",
    "This call may be recorded for quality and training purposes. Do you agree?",
]


def phone_line(pcm: bytes) -> bytes:
    enc, dec = Encoder("mulaw", 8000), Decoder("mulaw", 8000)
    return b"".join(f for p in enc.encode(pcm) for f in dec.decode(p))


def frames(pcm: bytes) -> list[bytes]:
    pcm += b"\x00" * (-len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def silence(ms: int) -> bytes:
    return b"\x00" * (ms * 32)


def bench_vad(rep: Report, eng: Engines, clips: list[bytes], quick: bool) -> None:
    assert eng.vad is not None
    vad = eng.vad.clone()
    fr = [f for c in clips for f in frames(c)]
    n = 0
    t0 = time.perf_counter()
    budget = 0.5 if quick else 2.0
    while time.perf_counter() - t0 < budget:
        for f in fr:
            vad.is_speech(f)
        n += len(fr)
    rate = n / (time.perf_counter() - t0)
    rep.add(
        "vad",
        "webrtc_vad_frames_per_s",
        rate,
        "frames/s",
        ">= 500",
        note=f"10 calls need 500/s: {500 / rate:.1%} of one core",
    )


def bench_partials(rep: Report, eng: Engines, clips: list[bytes], quick: bool) -> None:
    assert eng.stt_partial is not None
    stream = eng.stt_partial.open()
    audio_ms = cpu = 0.0
    for _ in range(1 if quick else 3):
        for c in clips:
            t0 = time.process_time()
            stream.start_utterance()
            for f in frames(c):
                stream.feed(f)
            stream.end_utterance()
            cpu += time.process_time() - t0
            audio_ms += pcm_ms(c)
    stream.close()
    rtf = cpu / (audio_ms / 1000)
    rep.add("partials", "pocketsphinx_partial_rtf", rtf, "cpu s/audio s", "<= 0.2")
    rep.add(
        "partials",
        "pocketsphinx_speaking_calls_2_cores",
        2 / rtf,
        "calls",
        ">= 10",
        note="callers speaking at once that 2 cores keep up with (partials only)",
    )


def bench_finals(rep: Report, eng: Engines, clips: list[bytes], quick: bool) -> None:
    assert eng.stt_final is not None
    whisper: Any = eng.stt_final
    whisper.transcribe(clips[0])  # warm-up
    times: list[float] = []
    audio_s = 0.0
    for _ in range(1 if quick else 3):
        for c in clips:
            t0 = time.perf_counter()
            whisper.transcribe(c)
            times.append(time.perf_counter() - t0)
            audio_s += pcm_ms(c) / 1000
    rep.add("finals", "whisper_final_decode_p50_ms", percentile(times, 50) * 1000, "ms", "<= 400")
    rep.add("finals", "whisper_final_rtf", sum(times) / audio_s, "s/audio s", "<= 0.2")
    rep.add("finals", "whisper_fallbacks_to_30s", whisper.fallbacks, "", "== 0")


async def _pool_round(
    eng: Engines, clips: list[bytes], calls: int, limits: PoolLimits
) -> dict[str, Any]:
    pool = SpeechPool(eng, limits)
    lag_max = 0.0
    partial_counts = [0] * calls

    def counter(i: int) -> Any:
        def on_partial(_p: Any) -> None:
            partial_counts[i] += 1

        return on_partial

    async def one(i: int) -> list[str]:
        call = await pool.open_call(counter(i))
        clip = silence(300 + 470 * i) + clips[i % len(clips)] + silence(1500)
        t0 = time.perf_counter()
        nonlocal lag_max
        for k, f in enumerate(frames(clip)):
            due = t0 + k * 0.02
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            call.push(f)
        final = await call.next_final(timeout=60)
        await call.close()
        return [final.text]

    t0 = time.perf_counter()
    texts = await asyncio.gather(*(one(i) for i in range(calls)))
    wall = time.perf_counter() - t0
    snap = pool.snapshot()
    out = {
        "e2f": list(pool.speech_end_to_final_ms),
        "after_event": list(pool.final_latency_ms),
        "lag_max_ms": lag_max * 1000,
        "dropped": snap["partial_frames_dropped"],
        "frames": snap["frames_in"],
        "partials": sum(partial_counts),
        "texts": texts,
        "wall_s": wall,
    }
    await pool.close()
    return out


def bench_pool(
    rep: Report, eng: Engines, clips: list[bytes], calls: int, quick: bool, limits: PoolLimits
) -> None:
    e2f: list[float] = []
    after: list[float] = []
    lag = 0.0
    dropped = frames_in = partials = 0
    for r in range(1 if quick else 3):
        with phase(f"pool round {r + 1}: {calls} calls in real time"):
            res = asyncio.run(_pool_round(eng, clips, calls, limits))
        e2f += res["e2f"]
        after += res["after_event"]
        lag = max(lag, res["lag_max_ms"])
        dropped += res["dropped"]
        frames_in += res["frames"]
        partials += res["partials"]
        log.info("  finals: %s", [t[0] for t in res["texts"]][:4])
    sec = f"pool ({calls} calls, real time)"
    rep.add(sec, "speech_end_to_final_p50_ms", percentile(e2f, 50), "ms", "<= 700")
    rep.add(sec, "speech_end_to_final_p90_ms", percentile(e2f, 90), "ms")
    rep.add(
        sec,
        "end_event_to_final_p50_ms",
        percentile(after, 50),
        "ms",
        note="after the segmenter's hangover (the recognizer's share)",
    )
    rep.add(sec, "partial_audio_shed_pct", 100 * dropped / max(1, frames_in), "%", "<= 5")
    rep.add(sec, "partials_delivered", partials, "")
    rep.add(sec, "event_loop_lag_max_ms", lag, "ms", "<= 100")


def bench_tts(rep: Report, eng: Engines, quick: bool) -> None:
    tts: Any = eng.tts
    assert tts is not None
    tts.synthesize("warm up")
    firsts: list[float] = []
    total_s = audio_s = 0.0
    for _ in range(1 if quick else 3):
        for text in AGENT_LINES:
            t0 = time.perf_counter()
            first: float | None = None
            n = 0
            for chunk in tts.synthesize_stream(text):
                if first is None:
                    first = time.perf_counter() - t0
                n += len(chunk)
            total_s += time.perf_counter() - t0
            audio_s += pcm_ms(n) / 1000
            assert first is not None
            firsts.append(first)
    rep.add("tts", "piper_first_audio_p50_ms", percentile(firsts, 50) * 1000, "ms", "<= 250")
    rep.add("tts", "piper_rtf", total_s / audio_s, "s/audio s", "<= 0.5")

    async def via_pool() -> list[float]:
        pool = SpeechPool(eng)
        for text in AGENT_LINES * (1 if quick else 3):
            async for _chunk in pool.say(text):
                pass
        out = list(pool.tts_first_audio_ms)
        await pool.close()
        return out

    rep.add(
        "tts",
        "say_first_audio_p50_ms",
        percentile(asyncio.run(via_pool()), 50),
        "ms",
        "<= 250",
        note="SpeechPool.say -> first chunk (thread + pipe hops included)",
    )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "speech bench")
    p.add_argument("--calls", type=int, default=10, help="concurrent calls in the pool run")
    p.add_argument("--partial-threads", type=int, default=1, help="SpeechPool partial threads")
    p.add_argument(
        "--whisper-threads", type=int, default=1, help="CTranslate2 cpu_threads per decode (1)"
    )
    p.add_argument(
        "--end-silence-ms", type=int, default=None, help="the segmenter's hangover (default 500)"
    )
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    rep = Report("speech", args.quick)
    env = environment(args.tmp_dir)
    for k in ("data_dir_base", "data_dir_fs"):
        env.pop(k, None)
    rep.meta.update(env)
    rep.meta["load_average_1m"] = os.getloadavg()[0]
    with phase("loading engines"):
        opts: dict[str, dict[str, Any]] = {
            "pocketsphinx": {"preload": args.calls},  # decoders ready before calls come
            "whisper": {"cpu_threads": args.whisper_threads},
        }
        rep.meta["threads"] = {"partial": args.partial_threads, "whisper": args.whisper_threads}
        seg = SegmenterConfig()
        if args.end_silence_ms is not None:
            seg = dataclasses.replace(seg, end_silence_ms=args.end_silence_ms)
        rep.meta["end_silence_ms"] = seg.end_silence_ms
        eng = build_engines(SpeechConfig(tts_fallbacks=(), options=opts, segmenter=seg))
    rep.meta["load_s"] = {k: round(v, 2) for k, v in eng.load_seconds.items()}
    try:
        assert eng.tts is not None
        with phase("synthesizing the callers' lines (Piper -> phone line)"):
            clips = [phone_line(eng.tts.synthesize(t)) for t in CALLER_LINES]
        with phase("vad"):
            bench_vad(rep, eng, clips, args.quick)
        with phase("pocketsphinx partials"):
            bench_partials(rep, eng, clips, args.quick)
        with phase("whisper finals"):
            bench_finals(rep, eng, clips, args.quick)
        with phase("tts"):
            bench_tts(rep, eng, args.quick)
        limits = PoolLimits(partial_threads=args.partial_threads)
        bench_pool(rep, eng, clips, args.calls, args.quick, limits)
    finally:
        eng.close()
    rep.note(
        "RTF = CPU (partials) or wall (finals, TTS) seconds per second of audio; the audio is"
        " Piper speech through a mu-law 8 kHz phone line."
    )
    rep.note(
        "end of speech -> final = the segmenter's silence hangover (end_silence_ms) + the"
        " webrtc VAD's own (~100-130 ms) + recognition not already done by speculation"
        " (whisper starts after 100 ms of VAD silence)."
    )
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
