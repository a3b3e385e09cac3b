"""End to end, no network: a synthesized caller phones voicehub and the whole product runs.

Over a Twilio media stream (μ-law 8 kHz) the caller hears the AI disclosure, the recording
notice and the consent question, says "yes, I agree to the recording of this call" - a
verbal consent record, the recording becomes active, the transcript has the caller's
exact words - then asks a question that the example agent answers; the caller's side
transcribes the agent's speech back. After the hang-up the recording is finalized, decrypts
to a two-channel WAV whose duration matches its row. The same over Vonage (L16 16 kHz). A
caller who says "no, I don't agree" gets no recording. A PCI pause leaves neither audio nor
transcript for its span. Speech is Piper (deterministic) for the caller and whisper tiny.en
for both ears: no model or service is fetched at run time.
"""

from __future__ import annotations

import array
import asyncio
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

from e2e_support import (
    VonageCallSim,
    speak,
    transcribe,
    twilio_caller,
    twilio_config,
    until,
    voice_node,
    vonage_voice_node,
    words,
)
from provider_support import ProviderNode
from vonage_support import request

from media.keys import Keyring
from media.recorder import export_wav

YES = "yes, I agree to the recording of this call"
NO = "no, I don't agree"
QUESTION = "what are your opening hours"


def rows(srv: ProviderNode, sql: str, call_id: int) -> list[dict[str, Any]]:
    return srv.sql(sql, [call_id])


def consent(srv: ProviderNode, call_id: int) -> list[dict[str, Any]]:
    return rows(
        srv,
        "SELECT c.decision, c.method, c.evidence FROM consent_records AS c"
        " JOIN participants AS p ON p.id = c.participant_id"
        " WHERE p.call_id = $1 AND c.kind = 'recording'",
        call_id,
    )


def finals(srv: ProviderNode, call_id: int) -> list[str]:
    segs = rows(
        srv,
        "SELECT id, speaker, text FROM transcript_segments WHERE call_id = $1 AND is_final",
        call_id,
    )
    return [words(s["text"]) for s in sorted(segs, key=lambda s: s["id"])]


def recordings(srv: ProviderNode, call_id: int) -> list[dict[str, Any]]:
    return rows(srv, "SELECT * FROM recordings WHERE call_id = $1", call_id)


async def converse(sim: Any, lines: list[str]) -> list[bytes]:
    """Wait for the agent, say each line, and return what the caller heard after each.

    The caller's voice is synthesized before the first word: synthesis blocks this process,
    and a real caller's audio does not stall while it thinks."""
    voices = [speak(line) for line in lines]
    assert await sim.wait_agent_quiet(timeout=120), "the agent never finished its prompts"
    heard = []
    for line, voice in zip(lines, voices, strict=True):
        mark = len(sim.received)
        await sim.say(voice)
        t = time.monotonic()
        assert await sim.wait_agent_quiet(since=t, timeout=60), f"no answer to {line!r}"
        heard.append(bytes(sim.received[mark:]))
    return heard


def check_recording(srv: ProviderNode, call_id: int, tmp: Path) -> tuple[Any, list[int]]:
    """The finalized recording decrypts to a 2-channel WAV of its row's duration."""
    (rec,) = recordings(srv, call_id)
    assert rec["status"] == "finalized", rec
    data_dir = srv.node.db.config.data_dir
    assert data_dir is not None
    keyring = Keyring.load_or_create(data_dir)
    out = tmp / f"call-{call_id}.wav"
    info = export_wav(
        data_dir / "recordings" / rec["storage_uri"],
        keyring,
        out,
        expected_checksum=rec["checksum"],
    )
    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 16000, 2)
        frames = w.readframes(w.getnframes())
        assert w.getnframes() == rec["duration_ms"] * 16
    samples = array.array("h", frames)
    energy = [sum(abs(x) for x in samples[ch::2]) for ch in (0, 1)]
    assert energy[0] > 0 and energy[1] > 0, "both the caller's and the agent's channel"
    active = (rec["stopped_at"] - rec["started_at"]) / 1000
    assert abs(rec["duration_ms"] - active) < 1500, (rec["duration_ms"], active)
    return info, list(samples)


async def test_a_spoken_yes_over_twilio(tmp_path: Path) -> None:
    async with voice_node(tmp_path / "d", twilio=twilio_config()) as srv:
        sim = twilio_caller(srv)
        call_id = await sim.dial()
        await sim.connect()
        heard = await converse(sim, [YES, QUESTION])
        (c,) = consent(srv, call_id)
        assert (c["decision"], c["method"]) == ("granted", "verbal")
        assert words(c["evidence"]) == words(YES)
        assert [r["status"] for r in recordings(srv, call_id)] == ["active"]
        said = finals(srv, call_id)
        assert said[:2] == [words(YES), words(QUESTION)]
        await sim.hangup()
        confirmation = words(transcribe(heard[0][: 28 * 32000]))  # after the call: it blocks
        assert "recorded" in confirmation, confirmation
        answer = words(transcribe(heard[1][: 28 * 32000]))
        assert "you said" in answer and "opening hours" in answer, answer
        await until(lambda: recordings(srv, call_id)[0]["status"] == "finalized")
        check_recording(srv, call_id, tmp_path)
        await export_by_cli_and_http(srv, call_id, tmp_path)


async def export_by_cli_and_http(srv: ProviderNode, call_id: int, tmp: Path) -> None:
    """``voicehub recording export`` as the owner writes the WAV and logs the access; an
    anonymous caller gets nothing (and logs nothing); a purpose is required."""
    data_dir = srv.node.db.config.data_dir
    assert data_dir is not None
    out = tmp / "exported.wav"
    cmd = [
        sys.executable, "-c", "from voicehub.cli import main; main()", "recording", "export",
        "--call", str(call_id), "--purpose", "quality review", "--url", srv.http_url,
        "--data-dir", str(data_dir), "--out", str(out),
    ]  # fmt: skip
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with wave.open(str(out), "rb") as w:
        assert w.getnchannels() == 2 and w.getnframes() > 16000
    (acc,) = rows(srv, "SELECT * FROM recording_accesses WHERE call_id = $1", call_id)
    assert acc["purpose"] == "quality review" and len(acc["accessor"]) == 64
    url = f"{srv.http_url}/v1/calls/{call_id}/recording.wav"
    anon = await request("GET", url + "?purpose=curiosity")
    assert anon.status == 404, anon.body
    owner = (data_dir / "owner.token").read_text().strip()
    bare = await request("GET", url, headers={"Authorization": f"Bearer {owner}"})
    assert bare.status == 400 and b"purpose" in bare.body
    assert len(rows(srv, "SELECT id FROM recording_accesses WHERE call_id = $1", call_id)) == 1


async def test_a_spoken_no_means_no_recording(tmp_path: Path) -> None:
    async with voice_node(tmp_path / "d", twilio=twilio_config()) as srv:
        sim = twilio_caller(srv)
        call_id = await sim.dial()
        await sim.connect()
        await converse(sim, [NO])
        (c,) = consent(srv, call_id)
        assert (c["decision"], c["method"]) == ("declined", "verbal")
        assert all(r["status"] != "active" for r in recordings(srv, call_id))
        assert finals(srv, call_id)[0] == words(NO)
        await sim.hangup()
        await until(
            lambda: (
                rows(srv, "SELECT status FROM calls WHERE id = $1", call_id)[0]["status"] == "ended"
            )
        )
        data_dir = srv.node.db.config.data_dir
        assert data_dir is not None
        assert not list((data_dir / "recordings").glob("**/*.vhrec*")), "no audio stored"


async def test_a_spoken_yes_over_vonage(tmp_path: Path) -> None:
    async with vonage_voice_node(tmp_path / "d") as srv:
        sim = VonageCallSim(srv.http_url, "e2e-vonage-call-1")
        call_id = await sim.dial()
        await sim.connect()
        heard = await converse(sim, [YES, QUESTION])
        (c,) = consent(srv, call_id)
        assert (c["decision"], c["method"]) == ("granted", "verbal")
        assert finals(srv, call_id)[:2] == [words(YES), words(QUESTION)]
        await sim.hangup()
        assert "recorded" in words(transcribe(heard[0][: 28 * 32000]))
        # the Vonage call ends with its completed event (a closed socket is only the leg)
        await srv.adapters["vonage"].ctx.client.call("call_ended", {"call_id": call_id})
        await until(lambda: recordings(srv, call_id)[0]["status"] == "finalized")
        check_recording(srv, call_id, tmp_path)


async def test_a_pci_pause_leaves_no_audio_and_no_transcript(tmp_path: Path) -> None:
    card = speak("my card number is four one one one two two two two")
    thanks = speak("thank you")
    async with voice_node(tmp_path / "d", twilio=twilio_config()) as srv:
        sim = twilio_caller(srv)
        call_id = await sim.dial()
        await sim.connect()
        await converse(sim, [YES])
        client = srv.adapters["twilio"].ctx.client
        await client.call("recording_pause", {"call_id": call_id, "reason": "pci"})
        await sim.silence(500)
        await sim.say(card)
        await sim.silence(1500)
        await client.call("recording_resume", {"call_id": call_id})
        await sim.silence(500)
        await sim.say(thanks)
        await sim.wait_agent_quiet(since=time.monotonic(), timeout=60)
        said = finals(srv, call_id)
        assert not any("card" in s or "four" in s for s in said), said
        assert words("thank you") in said
        await sim.hangup()
        await until(lambda: recordings(srv, call_id)[0]["status"] == "finalized")
        info, samples = check_recording(srv, call_id, tmp_path)
        ((start, end, _),) = [g for g in info.gaps if g[2] == "pci"]
        assert end - start > 2000, (start, end)
        caller = samples[0::2][start * 16 : end * 16]
        assert not any(caller), "no caller audio inside the PCI pause"
