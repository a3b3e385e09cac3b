"""The call worker: turns one live call's media session into the rows the product promises.

For every ``CallSession`` a provider adapter opens, ``CallWorker.run``:

- starts the default consent flow (``flow_start``, idempotent per call), handing the call
  to the configured agent identity once the consent question is answered;
- follows the call's ``recordings`` rows and records (``media.recorder``) **only while a
  row is active**: a new active row opens an encrypted two-channel file and stores its
  wrapped key (``recording_key_store``), a pause becomes a marked gap, a stop finalizes the
  file and reports it (``recording_finalize``);
- feeds the caller's frames to the recorder and to VAD/STT (``media.speech``) - the STT only
  while ``transcription_pauses`` does not hold the call, so a PCI pause leaves no text -
  and appends partials (throttled, shed first under load) and finals with
  ``transcript_append``;
- plays the call's queued ``utterances`` in order through TTS (``mark_playing``, the audio,
  a playback mark, ``mark_played`` with the milliseconds played), recording them on the
  agent channel as they leave;
- barge-in: caller speech while interruptible speech plays clears the provider's buffer,
  and the utterance is marked interrupted with the milliseconds played.

Invariants: recording frames are never dropped (writes are batched to a thread, not
shed); CPU-heavy work runs in the speech pool's threads or processes, never on the event
loop; every report carries a request id derived from the call and the row or segment it
reports, so a retry (or a restart of the worker) cannot apply it twice. The worker is a
client (``ClientAPI``): it never touches storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from media.keys import Keyring
from media.recorder import AsyncRecordingWriter, RecordingWriter, recover, unfinished
from media.speech.base import Final, Partial, SegmentEvent
from media.speech.worker import CallStt, SpeechPool
from providers.session import AudioFrame, CallSession, StreamEnded
from voicehub.client.api import ClientAPI
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.media")

LATE_MS = 100
"""An inbound frame handled later than this after it was due counts as late: its due time
is on the stream's own clock (``CallSession.lag_ms``), so any delay counts - the network,
the socket, a stalled event loop, a queue - not just time spent queued in the session."""

PARTIAL_EVERY_S = 0.3
"""At most one partial transcript commit per call this often (each is a commit + audit)."""


@dataclass
class WorkerMetrics:
    calls: int = 0
    frames_in: int = 0
    frames_recorded: int = 0
    agent_frames_recorded: int = 0
    finals: int = 0
    partials: int = 0
    partials_skipped: int = 0
    utterances_played: int = 0
    barge_ins: int = 0
    recordings_finalized: int = 0
    errors: int = 0
    late_frames: int = 0
    """Inbound frames handled more than ``LATE_MS`` after they were due (a worker behind)."""
    max_frame_lag_ms: int = 0
    say_to_first_frame_ms: list[float] = field(default_factory=list)


class CallWorker:
    """Runs every live call of one process (one instance, shared by all sessions)."""

    def snapshot(self) -> dict[str, Any]:
        """The worker's counters (and the speech pool's), for ``/v1/metrics``."""
        m = self.metrics
        out: dict[str, Any] = {k: v for k, v in vars(m).items() if not isinstance(v, list)}
        lat = sorted(m.say_to_first_frame_ms[-512:])
        out["say_to_first_frame_p50_ms"] = lat[len(lat) // 2] if lat else None
        out["live_calls"] = len(self.calls)
        out["open_recordings"] = len(self.writers)
        if self.speech is not None:
            out["speech"] = self.speech.snapshot()
        if self.gc_snapshot is not None:
            out["gc"] = self.gc_snapshot()
        return out

    def __init__(
        self,
        client: ClientAPI,
        speech: SpeechPool | None,
        recordings_dir: Path | None,
        keyring: Keyring | None,
        *,
        agent: str | None = None,
        start_flow: bool = True,
    ) -> None:
        self.client = client
        self.speech = speech
        self.recordings_dir = recordings_dir
        self.keyring = keyring
        self.agent = agent
        self.start_flow = start_flow
        self.metrics = WorkerMetrics()
        self.writers: dict[int, AsyncRecordingWriter] = {}
        """Open recordings by recording id (they outlive a stream that re-attaches)."""
        self.calls: dict[int, _Call] = {}
        self._watched: dict[int, Any] = {}
        self.gc_snapshot: Callable[[], dict[str, Any]] | None = None
        """The host's collector figures (``voicehub.media_host.GcPauses``), if any."""

    async def recover(self) -> int:
        """At start-up: finalize and report the recordings a crash left unfinished - except
        those whose row is still live (their call may re-attach and continue them): those
        are watched and finalized when their row stops."""
        if self.recordings_dir is None or self.keyring is None:
            return 0
        t0 = time.perf_counter()
        res = await self.client.query(
            "SELECT id FROM recordings WHERE status IN ('active', 'paused')"
        )
        live = {int(r[0]) for r in res.rows}
        parts = {rid for _, rid, _ in unfinished(self.recordings_dir)}
        done = await asyncio.to_thread(recover, self.recordings_dir, self.keyring, exclude=live)
        for fin in done:
            await self._report_final(fin)
        for rid in sorted(live & parts):
            await self.watch(rid)
        if done or live & parts:
            log.info(
                "recordings: %d unfinished finalized, %d kept for their live calls, in %.2f s",
                len(done),
                len(live & parts),
                time.perf_counter() - t0,
            )
        return len(done)

    async def watch(self, recording_id: int) -> None:
        """Finalize a recording nobody is writing when its row stops (its stream ended,
        or voicehub restarted, while the call went on)."""
        if recording_id in self._watched:
            return

        def changed(row: dict[str, Any]) -> None:
            if row["status"] in ("stopped", "finalized"):
                asyncio.get_running_loop().create_task(self._orphan_stopped(recording_id))

        sub = await self.client.subscribe(
            "SELECT id, status FROM recordings WHERE id = $1",
            [recording_id],
            key=["id"],
            as_dict=True,
            on_insert=changed,
            on_update=lambda _o, n: changed(n),
        )
        self._watched[recording_id] = sub

    async def _orphan_stopped(self, recording_id: int) -> None:
        sub = self._watched.pop(recording_id, None)
        if sub is None:
            return
        with contextlib.suppress(ServerError):
            await sub.unsubscribe()
        w = self.writers.pop(recording_id, None)
        if w is not None:
            fin = await w.finalize()
            await self._report_final(fin)
            return
        root, keyring = self.recordings_dir, self.keyring
        if root is None or keyring is None:
            return
        others = {rid for _, rid, _ in unfinished(root)} - {recording_id}
        for fin in await asyncio.to_thread(recover, root, keyring, exclude=others):
            await self._report_final(fin)

    async def run(self, session: CallSession) -> None:
        """The ``SessionRegistry.on_session`` handler: work the call until its stream ends."""
        self.metrics.calls += 1
        call = _Call(self, session)
        self.calls[session.call_id] = call
        try:
            await call.run()
        except Exception:
            self.metrics.errors += 1
            log.exception("call %s: the media worker failed", session.call_id)
        finally:
            if self.calls.get(session.call_id) is call:
                del self.calls[session.call_id]

    async def _report_final(self, fin: Any) -> None:
        args = {
            "recording_id": fin.recording_id,
            "key_id": fin.key_record.key_id,
            "master_key_id": fin.key_record.master_key_id,
            "wrapped_key": fin.key_record.wrapped_key,
        }
        rid = f"media:rec:{fin.recording_id}"
        with contextlib.suppress(ServerError):  # stored when the file was created
            await self.client.call("recording_key_store", args, request_id=f"{rid}:key")
        try:
            await self.client.call(
                "recording_finalize",
                {
                    "recording_id": fin.recording_id,
                    "storage_uri": fin.storage_uri,
                    "checksum": fin.checksum,
                    "key_id": fin.key_id,
                    "duration_ms": fin.duration_ms,
                },
                request_id=f"{rid}:final",
            )
            self.metrics.recordings_finalized += 1
        except ServerError as e:
            log.error("recording %s: cannot record its file: %s", fin.recording_id, e)


class _Call:
    """One session's work (a call may have several sessions over its life)."""

    def __init__(self, worker: CallWorker, session: CallSession) -> None:
        self.w = worker
        self.s = session
        self.call_id = session.call_id
        self.client = worker.client
        self.speaker = "caller"
        self.transcription_paused = False
        self.recording: dict[str, Any] | None = None  # the live recordings row
        self.utterances: dict[int, dict[str, Any]] = {}
        self.queue_wake = asyncio.Event()
        self.playing: dict[str, Any] | None = None
        self.playing_started = 0
        self.stt: CallStt | None = None
        self.segment_no = 0
        self.last_partial = 0.0
        self.partial_text = ""
        self.subs: list[Any] = []
        self._prefetched: dict[int, asyncio.Task[list[bytes]]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.rec_lock = asyncio.Lock()
        self.tag = f"{session.provider}-{session.provider_call_id}"[-48:]

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        s = self.s
        res = await self.client.query(
            "SELECT role FROM participants WHERE call_id = $1 AND role IN ('caller', 'callee')",
            [self.call_id],
        )
        if res.rows:
            self.speaker = str(res.rows[0][0])
        await self._subscribe()
        if self.w.speech is not None and self.w.speech.engines.vad is not None:
            self.stt = await self.w.speech.open_call(self._on_partial, self._on_segment)
            self.tasks.append(asyncio.create_task(self._finals()))
        self.tasks.append(asyncio.create_task(self._speak()))
        s.on_sent.append(self._on_sent)
        if self.w.start_flow:
            await self._start_flow()
        try:
            await self._consume()
        finally:
            await self._close()

    async def _consume(self) -> None:
        """Frames arrive through the session's audio sink (handled in the adapter's task as
        they are pushed); ``events()`` brings the rest, and frames that queued behind it."""
        s = self.s
        s.audio_sink = self._on_frame
        try:
            async for ev in s.events():
                if isinstance(ev, AudioFrame):
                    self._on_frame(ev)
                elif isinstance(ev, StreamEnded):
                    break
        finally:
            s.audio_sink = None

    async def _start_flow(self) -> None:
        args: dict[str, Any] = {"call_id": self.call_id}
        if self.w.agent:
            args["agent"] = self.w.agent
        try:
            await self.client.call("flow_start", args, request_id=f"media:flow:{self.call_id}")
        except ServerError as e:
            log.info("call %s: flow not started: %s", self.call_id, e.message)

    async def _close(self) -> None:
        with contextlib.suppress(ValueError):
            self.s.on_sent.remove(self._on_sent)
        if self.stt is not None:
            await self.stt.close()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for sub in self.subs:
            with contextlib.suppress(ServerError):
                await sub.unsubscribe()
        rec = self.recording
        if rec is not None:
            rid = int(rec["id"])
            if rec["status"] in ("stopped", "finalized"):
                await self._finalize(rid)
            elif rid in self.w.writers:
                # a live recording stays open: the call may re-attach (its stream comes
                # back); if it ends instead, the watcher finalizes it
                await self.w.watch(rid)

    # ---------------------------------------------------------------- store -> worker

    async def _subscribe(self) -> None:
        c, cid = self.client, [self.call_id]
        self.subs.append(
            await c.subscribe(
                "SELECT id, status, pause_reason FROM recordings WHERE call_id = $1",
                cid,
                key=["id"],
                as_dict=True,
                on_insert=self._on_recording,
                on_update=lambda _o, n: self._on_recording(n),
            )
        )
        self.subs.append(
            await c.subscribe(
                "SELECT call_id FROM transcription_pauses WHERE call_id = $1",
                cid,
                key=["call_id"],
                as_dict=True,
                on_insert=lambda _r: self._set_paused(True),
                on_delete=lambda _r: self._set_paused(False),
            )
        )
        self.subs.append(
            await c.subscribe(
                "SELECT id, text, status, interruptible FROM utterances WHERE call_id = $1",
                cid,
                key=["id"],
                as_dict=True,
                on_insert=self._on_utterance,
                on_update=lambda _o, n: self._on_utterance(n),
            )
        )

    def _set_paused(self, paused: bool) -> None:
        self.transcription_paused = paused
        if paused:
            log.info("call %s: transcription paused", self.call_id)

    def _on_utterance(self, row: dict[str, Any]) -> None:
        self.utterances[int(row["id"])] = row
        if row["status"] == "queued":
            self.queue_wake.set()
        p = self.playing
        if p is not None and int(p["id"]) == int(row["id"]) and row["status"] == "interrupted":
            asyncio.get_running_loop().create_task(self.s.clear())  # an agent's interrupt

    def _on_recording(self, row: dict[str, Any]) -> None:
        if row["status"] in ("pending",):
            return
        self.recording = row
        asyncio.get_running_loop().create_task(self._recording_changed(row))

    async def _recording_changed(self, row: dict[str, Any]) -> None:
        rid, status = int(row["id"]), str(row["status"])
        sub = self.w._watched.pop(rid, None)  # this call's stream is back: no orphan
        if sub is not None:
            with contextlib.suppress(ServerError):
                await sub.unsubscribe()
        async with self.rec_lock:
            w = self.w.writers.get(rid)
            now = self.s.media_now_ms()
            if status == "active":
                if w is None:
                    w = await self._open_writer(rid)
                elif w.writer.paused:
                    await w.resume(now)
            elif status == "paused" and w is not None and not w.writer.paused:
                await w.pause(str(row.get("pause_reason") or "paused"), now)
        if status == "stopped":
            await self._finalize(rid)

    async def _open_writer(self, recording_id: int) -> AsyncRecordingWriter | None:
        root, keyring = self.w.recordings_dir, self.w.keyring
        if root is None or keyring is None:
            log.warning("call %s: recording %s is active but no recorder is configured",
                        self.call_id, recording_id)  # fmt: skip
            return None
        try:
            raw = await asyncio.to_thread(
                RecordingWriter.create, root, recording_id, self.call_id, keyring
            )
        except FileExistsError:
            raw = await asyncio.to_thread(
                RecordingWriter.reopen, root, recording_id, self.call_id, keyring,
                self.s.media_now_ms(),
            )  # fmt: skip
        kr = raw.key_record
        await self.client.call(
            "recording_key_store",
            {
                "recording_id": recording_id,
                "key_id": kr.key_id,
                "master_key_id": kr.master_key_id,
                "wrapped_key": kr.wrapped_key,
            },
            request_id=f"media:rec:{recording_id}:key:{kr.key_id}",
        )
        w = AsyncRecordingWriter(raw)
        self.w.writers[recording_id] = w
        log.info("call %s: recording %s started", self.call_id, recording_id)
        return w

    async def _finalize(self, recording_id: int) -> None:
        async with self.rec_lock:
            w = self.w.writers.pop(recording_id, None)
            if w is None:
                return
            fin = await w.finalize(self.s.media_now_ms())
        await self.w._report_final(fin)
        log.info(
            "call %s: recording %s finalized (%d ms)", self.call_id, recording_id, fin.duration_ms
        )

    # ---------------------------------------------------------------- inbound

    def _live_writer(self) -> AsyncRecordingWriter | None:
        rec = self.recording
        if rec is None or rec["status"] != "active":
            return None
        return self.w.writers.get(int(rec["id"]))

    def _on_frame(self, f: AudioFrame) -> None:
        """One inbound frame, synchronously (the session's audio sink): late accounting,
        the recorder's batch, VAD/STT. Nothing here waits."""
        m = self.w.metrics
        m.frames_in += 1
        lag = self.s.lag_ms(f.timestamp_ms)  # behind the stream's own clock
        if lag > m.max_frame_lag_ms:
            m.max_frame_lag_ms = lag
        if lag > LATE_MS:
            m.late_frames += 1
        w = self._live_writer()
        if w is not None:
            w.write_nowait("caller", f.pcm, f.timestamp_ms)
            m.frames_recorded += 1
        if self.stt is not None and not self.transcription_paused:
            self.stt.push(f.pcm)

    def _on_sent(self, pcm: bytes, at_ms: int) -> None:
        w = self._live_writer()
        if w is not None:
            self.w.metrics.agent_frames_recorded += 1
            w.write_nowait("agent", pcm, at_ms)

    def _on_segment(self, ev: SegmentEvent) -> None:
        if ev.kind == "start":
            self.segment_no += 1
            self.partial_text = ""
            p = self.playing
            if p is not None and p.get("interruptible") and self.s.playing:
                self.w.metrics.barge_ins += 1
                log.info("call %s: barge-in over utterance %s", self.call_id, p["id"])
                asyncio.get_running_loop().create_task(self.s.clear())

    def _segment_key(self) -> str:
        return f"{self.tag}:{self.segment_no}"

    def _on_partial(self, p: Partial) -> None:
        text = p.text.strip()
        now = time.monotonic()
        if self.transcription_paused or not text or text == self.partial_text:
            return
        if now - self.last_partial < PARTIAL_EVERY_S:
            self.w.metrics.partials_skipped += 1
            return
        self.last_partial, self.partial_text = now, text
        args = {
            "call_id": self.call_id,
            "segment_key": self._segment_key(),
            "speaker": self.speaker,
            "text": text,
            "start_ms": 0,
            "end_ms": p.at_ms,
            "is_final": False,
            "engine": p.engine,
        }
        self.w.metrics.partials += 1
        asyncio.get_running_loop().create_task(self._append(args, None))

    async def _finals(self) -> None:
        assert self.stt is not None
        n = 0
        while True:
            final: Final = await self.stt.next_final()
            n += 1
            text = final.text.strip()
            if not text or self.transcription_paused:
                continue
            args = {
                "call_id": self.call_id,
                "segment_key": f"{self.tag}:{n}",
                "speaker": self.speaker,
                "text": text,
                "start_ms": final.start_ms,
                "end_ms": final.end_ms,
                "is_final": True,
                "engine": final.engine,
            }
            self.w.metrics.finals += 1
            await self._append(args, f"media:seg:{self.call_id}:{self.tag}:{n}")

    async def _append(self, args: dict[str, Any], request_id: str | None) -> None:
        try:
            await self.client.call("transcript_append", args, request_id=request_id)
        except ServerError as e:  # e.g. the call ended, or a PCI pause began meanwhile
            log.info("call %s: transcript not appended: %s", self.call_id, e.message)

    # ---------------------------------------------------------------- outbound

    def _next_queued(self) -> dict[str, Any] | None:
        queued = [u for u in self.utterances.values() if u["status"] == "queued"]
        return min(queued, key=lambda u: int(u["id"])) if queued else None

    async def _speak(self) -> None:
        while True:
            u = self._next_queued()
            if u is None:
                self.queue_wake.clear()
                await self.queue_wake.wait()
                continue
            await self._play(u)

    async def _audio_of(self, u: dict[str, Any]) -> AsyncIterator[bytes]:
        """The utterance's speech: prefetched while the previous one played, or streamed."""
        pool = self.w.speech
        if pool is None or pool.engines.tts is None:
            return
        uid = int(u["id"])
        pre = self._prefetched.pop(uid, None)
        if pre is not None:
            try:
                for chunk in await pre:
                    yield chunk
                return
            except Exception as e:  # synthesize again below
                log.info("utterance %s: prefetch failed: %s", uid, e)
        async for chunk in pool.say(str(u["text"])):
            yield chunk

    def _prefetch_next(self, after: int) -> None:
        pool = self.w.speech
        if pool is None or pool.engines.tts is None:
            return
        queued = [u for u in self.utterances.values() if u["status"] == "queued"]
        nxt = min((u for u in queued if int(u["id"]) > after), key=lambda u: int(u["id"]),
                  default=None)  # fmt: skip
        if nxt is None or int(nxt["id"]) in self._prefetched:
            return

        async def synth(text: str) -> list[bytes]:
            return [c async for c in pool.say(text)]

        task = asyncio.get_running_loop().create_task(synth(str(nxt["text"])))
        self._prefetched[int(nxt["id"])] = task
        self.tasks.append(task)  # type: ignore[arg-type]

    async def _play(self, u: dict[str, Any]) -> None:
        uid = int(u["id"])
        try:
            await self.client.call(
                "mark_playing", {"utterance_id": uid}, request_id=f"media:play:{uid}"
            )
        except ServerError as e:  # interrupted or ended meanwhile
            log.info("utterance %s not played: %s", uid, e.message)
            u["status"] = "skipped"
            return
        u["status"] = "playing"
        self.playing = u
        sent0 = self.s.stats.frames_sent
        t0 = time.perf_counter()
        played = False
        try:
            first = True
            async for chunk in self._audio_of(u):
                if self.s.ended is not None or self.utterances[uid]["status"] != "playing":
                    break
                self.s.play(chunk)
                if first:
                    first = False
                    self.w.metrics.say_to_first_frame_ms.append((time.perf_counter() - t0) * 1000)
            self._prefetch_next(uid)  # synthesize what comes next while this one plays
            mark = self.s.play(b"", mark=f"u{uid}") if self.s.ended is None else None
            played = bool(await mark) if mark is not None else False
        except RuntimeError as e:  # the stream ended under us
            log.info("utterance %s: %s", uid, e)
        finally:
            self.playing = None
        played_ms = (self.s.stats.frames_sent - sent0) * 20
        try:
            await self.client.call(
                "mark_played",
                {"utterance_id": uid, "played_ms": played_ms, "interrupted": not played},
                request_id=f"media:played:{uid}",
            )
            self.w.metrics.utterances_played += int(played)
        except ServerError as e:  # already interrupted by an agent's interrupt
            log.info("utterance %s: %s", uid, e.message)
