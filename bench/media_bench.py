"""The media pipeline: concurrent simulated Twilio calls over real WebSockets, frames paced
in real time, into a ``voicehub serve`` subprocess.

1. **Recording + VAD capacity.** N calls (server with ``--speech-engines vad``): each is
   answered (signed webhook, ``<Connect><Stream>``), consents by DTMF ``1`` (the flow's
   prompts have no TTS here), so its recording is active, then streams μ-law audio (a tone
   with pauses) for the measuring window. The server's ``/v1/metrics`` gives the frames it
   handled, how many were late (handled > 100 ms after they arrived) and what it recorded;
   a step passes with zero late and zero lost frames. Reported: the largest N that passed.
2. **Streaming STT.** M calls with every engine (``--agent none``): after the flow, each
   caller says synthesized sentences; the bench, subscribed to the final transcript rows,
   measures end of speech (the caller's last speech frame) -> final row received; then,
   with the line quiet, ``say`` -> the first outbound audio frame at that caller.

Targets (2-core machine, load generator on it): >= 200 calls with recording + VAD, >= 10
with streaming STT, end of speech -> final p50 <= 700 ms, say -> first audio p50 <= 250 ms.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._serve_process import ServeProcess
from bench.common import (
    Report,
    base_parser,
    environment,
    finish,
    fresh_dir,
    load_average,
    percentile,
    phase,
    setup_logging,
)
from providers.codecs import Encoder
from voicehub.simulate import TwilioCallSim

log = logging.getLogger("bench.media")

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    steps: tuple[int, ...]
    window_s: float
    stt_calls: int
    utterances: int


FULL = Sizes(steps=(50, 100, 150, 200), window_s=20.0, stt_calls=10, utterances=3)
QUICK = Sizes(steps=(50, 100), window_s=8.0, stt_calls=4, utterances=2)


class Server(ServeProcess):
    """``voicehub serve`` (simulator on) with the owner's view of it: metrics, SQL, callers."""

    def wait_ready(self, timeout: float = 120.0, also: Callable[[], bool] | None = None) -> None:
        super().wait_ready(timeout, lambda: (self.data_dir / "simulator.json").exists())

    @property
    def owner(self) -> str:
        return (self.data_dir / "owner.token").read_text().strip()

    def _get(self, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.owner}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = self._get("/v1/metrics")
        return out

    def sql(self, query: str) -> list[list[Any]]:
        rows: list[list[Any]] = self._get("/v1/sql", {"sql": query})["rows"]
        return rows

    def sim(self) -> TwilioCallSim:
        doc = json.loads((self.data_dir / "simulator.json").read_text())
        return TwilioCallSim(self.url, doc["public_url"], doc["auth_token"])


# ---------------------------------------------------------------- 1. capacity


def _tone_payloads(seconds: int) -> list[str]:
    """μ-law payloads (base64) of a 300 Hz tone, 1 s on, 1 s off: speech-like for the VAD."""
    import math
    import struct

    enc = Encoder("mulaw", 8000)
    out: list[str] = []
    for i in range(seconds * 50):
        on = (i // 50) % 2 == 0
        pcm = struct.pack(
            "<320h",
            *(int(6000 * math.sin(2 * math.pi * 300 * (i * 320 + k) / 16000)) if on else 0
              for k in range(320)),
        )  # fmt: skip
        out += [base64.b64encode(p).decode() for p in enc.encode(pcm)]
    return out


async def _capacity_step(server: Server, n: int, window_s: float) -> dict[str, Any]:
    sims = [server.sim() for _ in range(n)]
    t0 = time.perf_counter()
    for i in range(0, n, 20):  # webhooks and streams, 20 at a time
        batch = sims[i : i + 20]
        await asyncio.gather(*(s.dial() for s in batch))
        await asyncio.gather(*(s.connect() for s in batch))
    log.info("  %d calls connected in %.1f s", n, time.perf_counter() - t0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every call's flow asks its consent question
        if (
            server.sql("SELECT count(*) FROM call_flows WHERE state = 'awaiting_consent'")[0][0]
            >= n
        ):
            break
        await asyncio.gather(*(s.silence(100) for s in sims))
    for s in sims:
        await s.press("1")  # consent by DTMF: the recordings become active
    payloads = _tone_payloads(4)
    loop = asyncio.get_running_loop()
    warm = 150  # 3 s of streaming while the recordings start (files created and fsynced)
    ticks = int(window_s * 50) + warm
    # frames are counted from before the first one (exact: nothing streams now); the late
    # frames and the CPU from the end of the warm-up, read in a thread so the generator
    # keeps its pace while the busy server answers
    m_start = server.metrics()["media"]
    sent = sent_window = 0
    start = loop.time()
    behind = 0
    m0_task: asyncio.Future[dict[str, Any]] | None = None
    cpu0 = gen0 = 0.0
    for tick in range(ticks):
        if tick == warm:
            m0_task = asyncio.ensure_future(asyncio.to_thread(server.metrics))
            sent_window, behind = sent, 0
            cpu0, gen0 = server.cpu_seconds(), time.process_time()
        p = payloads[tick % len(payloads)]
        for s in sims:  # a real, masked WebSocket text frame each, into the socket's buffer
            sent += s.send_media_nowait(p)
        delay = start + (tick + 1) * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind = max(behind, int(-delay * 1000))
    gen_cpu = time.process_time() - gen0
    sent_window = sent - sent_window
    await asyncio.sleep(1.0)  # let the server drain
    m1 = server.metrics()["media"]
    server_cpu = server.cpu_seconds() - cpu0
    assert m0_task is not None
    m0 = (await m0_task)["media"]
    await asyncio.gather(*(s.hangup() for s in sims))
    got = m1["frames_in"] - m_start["frames_in"]
    # a stream's decoder may hold back up to one frame (a resampler remainder)
    lost = max(0, sent - got - n)
    late = m1["late_frames"] - m0["late_frames"]
    return {
        "calls": n,
        "frames_sent": sent,
        "frames_handled": got,
        "lost": lost,
        "frames_recorded": m1["frames_recorded"] - m0["frames_recorded"],
        "open_recordings": m1["open_recordings"],
        "late": late,
        "max_lag_ms": m1["max_frame_lag_ms"],
        "generator_behind_ms": behind,
        "server_cpu_us_per_frame": round(server_cpu / max(1, sent_window) * 1e6, 1),
        "generator_cpu_us_per_frame": round(gen_cpu / max(1, sent_window) * 1e6, 1),
        "load_average": load_average(),
        "server_gc": m1.get("gc"),
        "ok": lost == 0 and late == 0 and behind < 100,
    }


def _run(main: Coroutine[Any, Any, T]) -> T:
    """The load generator's loop: uvloop where installed (less CPU per frame sent)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def bench_capacity(rep: Report, tmp: Path | None, s: Sizes) -> None:
    results = []
    for n in s.steps:
        with fresh_dir(tmp, f"media-cap-{n}") as d:
            server = Server(d / "data", "--speech-engines", "vad", "--agent", "none")
            log.info("  server pid %d", server.proc.pid)
            try:
                with phase(f"recording + VAD: starting voicehub serve for {n} calls"):
                    server.wait_ready()
                with phase(f"recording + VAD: {n} calls for {s.window_s:.0f} s"):
                    r = _run(_capacity_step(server, n, s.window_s))
            finally:
                server.stop()
        log.info("  %s", r)
        results.append(r)
        if not r["ok"]:
            break
    sec = "1. recording + VAD, frames paced in real time"
    passed = [r["calls"] for r in results if r["ok"]]
    rep.add(sec, "recording_vad_calls_sustained", max(passed, default=0), "calls", ">= 200")
    for r in results:
        n = r["calls"]
        rep.add(sec, f"recording_vad_{n}_late_frames", r["late"], "frames")
        rep.add(sec, f"recording_vad_{n}_lost_frames", r["lost"], "frames")
        rep.add(sec, f"recording_vad_{n}_max_lag_ms", r["max_lag_ms"], "ms",
                note="since start, including the recordings' start-up")  # fmt: skip
        rep.add(sec, f"recording_vad_{n}_open_recordings", r["open_recordings"], "recordings")
        rep.add(sec, f"recording_vad_{n}_recorded_frames", r["frames_recorded"], "frames")


# ---------------------------------------------------------------- 2. STT


LINES = [
    "I would like to check the status of my order",
    "can you tell me when you are open on saturday",
    "please send me a copy of my last invoice",
]


async def _stt_run(server: Server, m: int, utterances: int, voices: list[bytes]) -> dict:
    from voicehub.client import Client

    client = Client(server.url.replace("http://", "ws://") + "/v1/ws", auth_token=server.owner)
    await client.start()
    arrivals: dict[tuple[int, str], float] = {}

    def on_final(row: Any) -> None:
        if row[2] and row[1] is not None:
            arrivals.setdefault((int(row[3]), str(row[1])), time.monotonic())

    await client.subscribe(
        "SELECT id, segment_key, is_final, call_id FROM transcript_segments WHERE is_final",
        on_insert=on_final,
        on_update=lambda _o, n: on_final(n),
    )
    sims = [server.sim() for _ in range(m)]
    for sim in sims:
        await sim.dial()
        await sim.connect()
    await asyncio.gather(*(sim.wait_agent_quiet(timeout=120) for sim in sims))
    await asyncio.gather(*(sim.press("1") for sim in sims))
    await asyncio.gather(
        *(sim.wait_agent_quiet(since=time.monotonic(), timeout=60) for sim in sims)
    )
    ends: list[tuple[int, float]] = []

    async def speak(sim: TwilioCallSim, k: int) -> None:
        await asyncio.sleep(0.37 * k)  # stagger the calls
        for u in range(utterances):
            await sim.say(voices[(k + u) % len(voices)])
            assert sim.call_id is not None
            ends.append((sim.call_id, time.monotonic()))
            await sim.silence(2500)

    await asyncio.gather(*(speak(sim, k) for k, sim in enumerate(sims)))
    await asyncio.sleep(2.0)
    lat = []
    for call_id, t_end in ends:
        after = [t for (c, _), t in arrivals.items() if c == call_id and t >= t_end]
        if after:
            lat.append(min(after) - t_end)
    # say -> first outbound frame, with the line quiet
    say_lat = []
    for sim in sims:
        await sim.silence(500)
        first: list[float] = []
        sim.on_audio = lambda _pcm, first=first: first.append(time.monotonic())
        await client.call("say", {"call_id": sim.call_id, "text": "One moment please."})
        t_commit = time.monotonic()
        t = t_commit
        while not [x for x in first if x >= t_commit] and time.monotonic() - t < 10:
            await sim.silence(20)
        after = [x for x in first if x >= t_commit]
        if after:
            say_lat.append(after[0] - t_commit)
        else:
            log.warning("call %s: no audio within 10 s of say (%d frames before)",
                        sim.call_id, len(first))  # fmt: skip
        sim.on_audio = None
    metrics = server.metrics()["media"]
    await asyncio.gather(*(sim.hangup() for sim in sims))
    await client.close()
    return {"final": lat, "say": say_lat, "utterances": len(ends), "metrics": metrics}


def bench_stt(rep: Report, tmp: Path | None, s: Sizes) -> None:
    from media.speech.registry import SpeechConfig, build_engines

    with phase("synthesizing the callers' voices"):
        eng = build_engines(SpeechConfig(vad=None, stt_partial=None, stt_final=None))
        assert eng.tts is not None
        voices = [eng.tts.synthesize(line) for line in LINES]
        eng.close()
    with fresh_dir(tmp, "media-stt") as d:
        server = Server(d / "data", "--agent", "none")
        try:
            with phase("streaming STT: starting voicehub serve (all engines)"):
                server.wait_ready()
                time.sleep(5)  # the engines load after readiness
            with phase(f"streaming STT: {s.stt_calls} calls, {s.utterances} utterances each"):
                r = asyncio.run(_stt_run(server, s.stt_calls, s.utterances, voices))
        finally:
            server.stop()
    sec = f"2. streaming STT ({s.stt_calls} calls) and speech out"
    got = len(r["final"])
    # the target is for the full run; --quick measures fewer calls
    rep.add(sec, "stt_calls", s.stt_calls, "calls", ">= 10" if s.stt_calls >= 10 else None)
    rep.add(sec, "stt_finals_received", got, f"of {r['utterances']}")
    if r["final"]:
        rep.add(sec, "speech_end_to_final_p50_ms", percentile(r["final"], 50) * 1000, "ms",
                "<= 700")  # fmt: skip
        rep.add(sec, "speech_end_to_final_p99_ms", percentile(r["final"], 99) * 1000, "ms")
    if r["say"]:
        rep.add(sec, "say_to_first_audio_p50_ms", percentile(r["say"], 50) * 1000, "ms",
                "<= 250")  # fmt: skip
        rep.add(sec, "say_to_first_audio_p99_ms", percentile(r["say"], 99) * 1000, "ms")
    sp = r["metrics"].get("speech") or {}
    rep.add(sec, "partial_frames_shed", sp.get("partial_frames_dropped", 0), "frames")
    rep.add(sec, "late_frames", r["metrics"]["late_frames"], "frames")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "media bench")
    p.add_argument("--only", choices=["capacity", "stt"])
    p.add_argument("--steps", help="capacity steps, comma-separated call counts (e.g. 100,200)")
    p.add_argument("--window-s", type=float, help="capacity measuring window per step (s)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    s = QUICK if args.quick else FULL
    if args.steps:
        s = replace(s, steps=tuple(int(x) for x in args.steps.split(",")))
    if args.window_s:
        s = replace(s, window_s=args.window_s)
    tmp: Path | None = args.tmp_dir
    rep = Report("media", args.quick)
    rep.meta.update(environment(tmp))
    rep.meta["load_average_before"] = load_average()
    rep.meta["workload"] = {
        "capacity_steps": list(s.steps),
        "window_s": s.window_s,
        "stt_calls": s.stt_calls,
        "utterances": s.utterances,
    }
    rep.note("callers: simulated Twilio media streams from this process (one event loop)")
    t0 = time.perf_counter()
    if args.only in (None, "capacity"):
        bench_capacity(rep, tmp, s)
    if args.only in (None, "stt"):
        bench_stt(rep, tmp, s)
    rep.meta["load_average_after"] = load_average()
    rep.meta["bench_seconds"] = round(time.perf_counter() - t0, 1)
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
