"""Benchmark of the call recorder engine (``media/recorder.py``): CPU cost per call-second.

    .venv/bin/python bench/recorder_bench.py [--quick] [--check] [--calls N] [--seconds S]

Simulates N concurrent calls (default 200) recording both channels at 50 frames/s/channel
(20 ms frames of 640 bytes): every 20 ms step writes one caller and one agent frame to each
call's ``RecordingWriter``, as fast as possible, with the default fsync every 2 s of media
time; then finalizes every call. Figures: frames/s, MB/s of PCM in and file bytes out, and
process CPU time (user + system, so fsync's kernel work counts) per call-second. The target
is 200 live calls costing < 25 % of one core, i.e. >= 800 call-seconds (both channels) per
CPU-second. Also measured: finalize, verify+export of one call to WAV (x real time), and
tolerant recovery scans. Progress goes to stderr; stdout gets a table and, last, one line
of JSON with every figure and its target. ``--quick`` takes well under a minute.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Report,
    base_parser,
    environment,
    finish,
    fresh_dir,
    load_average,
    phase,
    setup_logging,
)
from media.recorder import (
    Keyring,
    RecordingWriter,
    export_wav,
    recover,
    verify,
)

log = logging.getLogger("voicehub.bench")

FRAME_BYTES = 640
FRAMES_PER_S = 50
TARGET_CALL_S_PER_CPU_S = 800


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def run(calls: int, seconds: int, base: Path | None, rep: Report) -> None:
    rng = random.Random(1)
    pool = [rng.randbytes(FRAME_BYTES) for _ in range(97)]
    steps = seconds * FRAMES_PER_S
    kr = Keyring.generate()
    with fresh_dir(base, "recorder") as root:
        rep.meta["data_dir_fs"] = environment(root)["data_dir_fs"]
        with phase(f"create {calls} recordings"):
            writers = [RecordingWriter.create(root, i + 1, 1000 + i, kr) for i in range(calls)]
        c0, t0 = cpu(), time.perf_counter()
        n_pool = len(pool)
        with phase(f"record {calls} calls x {seconds} s"):
            for step in range(steps):
                ts = 20 * step
                for i, w in enumerate(writers):
                    w.write("caller", pool[(step + i) % n_pool], ts)
                    w.write("agent", pool[(step + 3 * i + 1) % n_pool], ts)
                if step % (10 * FRAMES_PER_S) == 0 and step:
                    log.info("  %d s of media written", step // FRAMES_PER_S)
        c1, t1 = cpu(), time.perf_counter()
        with phase("finalize"):
            done = [w.finalize() for w in writers]
        c2, t2 = cpu(), time.perf_counter()

        frames = 2 * calls * steps
        call_s = calls * seconds
        wall, cpu_s = t1 - t0, c1 - c0
        out_bytes = sum((root / d.storage_uri).stat().st_size for d in done)
        per_cpu = call_s / cpu_s if cpu_s > 0 else float("inf")
        s = "record"
        rep.add(s, "frames_per_s", frames / wall, "frames/s", note="both channels, wall clock")
        rep.add(s, "pcm_in_mb_per_s", frames * FRAME_BYTES / wall / 1e6, "MB/s")
        rep.add(s, "file_out_mb_per_s", out_bytes / wall / 1e6, "MB/s")
        rep.add(s, "overhead_bytes_pct", 100 * (out_bytes / (frames * FRAME_BYTES) - 1), "%")
        rep.add(s, "cpu_us_per_frame", 1e6 * cpu_s / frames, "µs")
        rep.add(s, "cpu_ms_per_call_second", 1e3 * cpu_s / call_s, "ms")
        rep.add(
            s,
            "call_seconds_per_cpu_second",
            per_cpu,
            "call-s/cpu-s",
            target=f">= {TARGET_CALL_S_PER_CPU_S}",
        )
        rep.add(
            s,
            "core_share_200_calls_pct",
            100 * 200 / per_cpu,
            "% of a core",
            target="< 25",
            note="200 live calls, both channels, fsync every 2 s",
        )
        rep.add(s, "realtime_factor_all_calls", seconds / wall, "x real time")
        rep.add(
            "finalize",
            "finalize_ms_per_call",
            1e3 * (t2 - t1) / calls,
            "ms",
            note=f"cpu {1e3 * (c2 - c1) / calls:.2f} ms",
        )

        path = root / done[0].storage_uri
        t3 = time.perf_counter()
        info = verify(path, kr, expected_checksum=done[0].checksum)
        t4 = time.perf_counter()
        export_wav(path, kr, root / "one.wav")
        t5 = time.perf_counter()
        assert info.duration_ms == seconds * 1000, info.duration_ms
        assert (root / "one.wav").stat().st_size >= seconds * 64000
        rep.add("read", "verify_x_realtime", seconds / (t4 - t3), "x real time")
        rep.add("read", "export_wav_x_realtime", seconds / (t5 - t4), "x real time")

        # recovery: the same calls left unfinished (abort), then recovered at "startup"
        rec_root = root / "crash"
        ws = [RecordingWriter.create(rec_root, i + 1, 1, kr) for i in range(min(calls, 50))]
        for step in range(min(steps, 10 * FRAMES_PER_S)):
            for i, w in enumerate(ws):
                w.write("caller", pool[(step + i) % n_pool], 20 * step)
                w.write("agent", pool[(step + i + 5) % n_pool], 20 * step)
        for w in ws:
            w.abort()
        t6 = time.perf_counter()
        got = recover(rec_root, kr)
        t7 = time.perf_counter()
        assert len(got) == len(ws)
        media_s = len(ws) * min(seconds, 10)
        rep.add("recover", "recover_x_realtime", media_s / (t7 - t6), "x real time")
        rep.meta["workload"] = {
            "calls": calls,
            "media_s": seconds,
            "frames": frames,
            "file_bytes": out_bytes,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu_s, 2),
        }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "recorder bench")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--seconds", type=int, default=None, help="media seconds per call")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    seconds = args.seconds or (15 if args.quick else 60)
    rep = Report("recorder", args.quick)
    rep.meta.update(environment(args.tmp_dir))
    rep.meta["load_1m_before"] = load_average()
    run(args.calls, seconds, args.tmp_dir, rep)
    rep.meta["load_1m_after"] = load_average()
    rep.note(
        "CPU is os.times() user+system of this process for the recording loop (fsync's kernel"
        " work included, the wait for the disk not); one thread, so it is one core's worth"
    )
    rep.note("frames come from a pool of random PCM, so the cost of producing audio is excluded")
    return finish(rep, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
