"""Live diarization over a WebSocket: ``/v1/diarize/stream`` (docs/service.md, "Live diarization").

The client opens the socket and sends, as its first message, a JSON text::

    {"key": "dsk_...", "sample_rate": 16000, "names": true, "max_speakers": null}

(the key may come in an ``Authorization: Bearer`` header of the handshake instead; browsers cannot set one).
The server answers ``{"type": "ready", ...}``; then each binary message is raw signed 16-bit little-endian
mono samples at that rate, and the server sends, as they become final::

    {"type": "turn", "start": 3.2, "end": 7.9, "speaker": "speaker_1"}
    {"type": "current", "start": 8.4, "speaker": "speaker_2"}   # the turn in progress, when it changes
    {"type": "name", "speaker": "speaker_1", "name": "alice"}   # an enrolled speaker recognised

The text ``{"type": "end"}`` ends the stream: the last turns and names, then ``{"type": "done", "speakers": [...],
"num_speakers": N, "duration": s, "speech": s}``, and the server closes the socket. An error is one
``{"type": "error", "error": {"code", "message"}}`` message (the codes of the HTTP API), then the close.

The gates are the HTTP API's, in its order: a valid key (`Service.authenticate`, as for every HTTP call: wrong
secrets throttled per key id), the key's rate (one request per stream), the ``identify`` scope (as POST
/v1/diarize), then a place among ``max_streams`` live streams (``busy`` when none is left). A stream that sends
nothing for ``IDLE_TIMEOUT_S`` is closed, so an idle client cannot keep a place.
A stream runs `SpeakerEncoder.diarize_stream` in this server process, on a model it loads once for all
streams (the same file and runtime as the workers), each push in a thread so the event loop never waits on
it. Enrolled speakers (their means at the stream's start) are recognised as the online diarizer recognises
them (`online_naming_threshold`) and announced by "name" messages.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from deep_speaker.service.keys import allows

log = logging.getLogger("deep_speaker.service")

START_TIMEOUT_S = 10.0  # the first message (key and settings) must come within this
IDLE_TIMEOUT_S = 30.0  # a stream that sends nothing for this long is closed (it would hold its place)
MAX_START_CHARS = 4096  # the first message is a small JSON object
MAX_MESSAGE_BYTES = 1 << 20  # one binary message: 32 s of 16 kHz audio (serve.py caps uvicorn's frames near it)
SCOPE = "identify"  # the scope of POST /v1/diarize


class StreamError(Exception):
    """An error to send to the client before closing: code (as the HTTP API's), message, WebSocket close code."""

    def __init__(self, code: str, message: str, close: int = 1008):
        super().__init__(message)
        self.code, self.message, self.close = code, message, close


class LiveStreams:
    """The live streams of one server process: their count, bounded, and the model they share."""

    def __init__(self, service, max_streams: int, max_seconds: float):
        self.service, self.max_streams, self.max_seconds = service, max_streams, max_seconds
        self.active = 0
        self._lock = threading.Lock()  # the count (taken on the event loop: never held long)
        self._loading = threading.Lock()  # the model's first load (seconds, in a thread)
        self._encoder = None

    def admit(self) -> bool:
        with self._lock:
            if self.active >= self.max_streams:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1

    def encoder(self):
        """The model, loaded once (in a thread: it takes a second) for every stream of this process."""
        with self._loading:
            if self._encoder is None:
                from deep_speaker.encoder import SpeakerEncoder

                self._encoder = SpeakerEncoder(self.service.model["path"], runtime=self.service.model["runtime"])
            return self._encoder


async def serve_stream(websocket: WebSocket, service) -> None:
    """One live diarization, from the handshake to the close (the module's docstring)."""
    await websocket.accept()
    streams: LiveStreams = service.live
    admitted = False
    try:
        start = await _start_message(websocket)
        await _check_key(websocket, service, start)
        rate, names, max_speakers = _stream_settings(start)
        if streams.max_streams == 0:
            raise StreamError("busy", "live streams are off on this server (--max_streams 0)", 1013)
        if not streams.admit():
            raise StreamError("busy", f"every live stream is taken ({streams.max_streams}, --max_streams); retry "
                                      "later", 1013)
        admitted = True
        encoder = await run_in_threadpool(streams.encoder)
        enrolment = await run_in_threadpool(_enrolment, service, encoder) if names else None
        stream = await run_in_threadpool(lambda: encoder.diarize_stream(rate, enrolment, max_speakers=max_speakers,
                                                                        uri="live"))
        await websocket.send_json({"type": "ready", "sample_rate": rate, "model_sha256": service.stamp.sha256,
                                   "named_from": len(enrolment.speakers) if enrolment is not None else 0})
        await _run(websocket, stream, rate, streams.max_seconds)
    except StreamError as error:
        await _refuse(websocket, error)
    except WebSocketDisconnect:
        pass  # the client went away: nothing to answer
    except Exception as error:  # noqa: BLE001 - the log has it; the client gets one line
        log.error("internal error in a live stream", exc_info=error)
        await _refuse(websocket, StreamError("internal_error", "internal error; the server's log has the details",
                                             1011))
    finally:
        if admitted:
            streams.release()


async def _start_message(websocket: WebSocket) -> dict[str, Any]:
    try:
        text = await asyncio.wait_for(websocket.receive_text(), START_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise StreamError("bad_request", f"no start message within {START_TIMEOUT_S:g} s") from None
    except (KeyError, TypeError):  # a binary first message
        raise StreamError("bad_request", "the first message is JSON text: {\"key\", \"sample_rate\", ...}") from None
    start = None
    if len(text) <= MAX_START_CHARS:
        try:
            start = json.loads(text)
        except (ValueError, RecursionError):
            pass
    if not isinstance(start, dict):
        raise StreamError("bad_request", "the first message is a JSON object: {\"key\", \"sample_rate\", ...}")
    return start


async def _check_key(websocket: WebSocket, service, start: dict[str, Any]) -> None:
    """The HTTP API's gates (`Service.authenticate`: a valid key, wrong secrets throttled, within its rate),
    and the scope."""
    from deep_speaker.service.server import KeyRefused

    scheme, _, header_key = websocket.headers.get("authorization", "").partition(" ")
    key = start.get("key") or (header_key.strip() if scheme.lower() == "bearer" else "")
    if not isinstance(key, str) or not key:
        raise StreamError("missing_key", "this stream needs an API key: send {\"key\": \"<key>\"} first, or "
                                         "'Authorization: Bearer <key>' with the handshake")
    try:
        record = await run_in_threadpool(service.authenticate, key.strip())
    except KeyRefused as refused:
        raise StreamError(refused.code, refused.message, 1013 if refused.status in (429, 503) else 1008) from None
    if not allows(record.scopes, SCOPE):
        raise StreamError("forbidden", f"this key lacks the {SCOPE!r} scope (it has: {', '.join(record.scopes)})")


def _stream_settings(start: dict[str, Any]) -> tuple[int, bool, int | None]:
    from deep_speaker.audio import MAX_INPUT_RATE_HZ, MIN_INPUT_RATE_HZ
    from deep_speaker.diarization import DiarizationSettings

    rate, names, max_speakers = start.get("sample_rate", 16000), start.get("names", True), start.get("max_speakers")
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
        raise StreamError("bad_request", f"sample_rate must be a whole number of Hz, {MIN_INPUT_RATE_HZ}-"
                                         f"{MAX_INPUT_RATE_HZ}; got {rate!r}")
    if not isinstance(names, bool):
        raise StreamError("bad_request", f"names must be true or false; got {names!r}")
    most = DiarizationSettings().max_speakers
    if max_speakers is not None and (isinstance(max_speakers, bool) or not isinstance(max_speakers, int)
                                     or not 1 <= max_speakers <= most):
        raise StreamError("bad_request", f"max_speakers must be a whole number, 1-{most}, or null; got "
                                         f"{max_speakers!r}")
    return rate, names, max_speakers


def _enrolment(service, encoder):
    """The enrolled speakers' means now, as an Enrolment the stream names speakers from (None: nobody)."""
    from deep_speaker.identification import Enrolment, enrolment_settings

    snapshot = service.means()
    if not snapshot.ids:
        return None
    return Enrolment(list(snapshot.ids), np.asarray(snapshot.matrix, np.float32), [0] * len(snapshot.ids),
                     dict(encoder.model_identity), enrolment_settings(encoder.config))


async def _run(websocket: WebSocket, stream, rate: int, max_seconds: float) -> None:
    """Audio in, turns out, until the client ends the stream."""
    current = None
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), IDLE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise StreamError("bad_request", f"nothing received for {IDLE_TIMEOUT_S:g} s: the stream is closed "
                                             "(send {\"type\": \"end\"} to end one)") from None
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > MAX_MESSAGE_BYTES or len(data) % 2:
                raise StreamError("bad_request", f"a binary message is 16-bit samples: an even number of bytes, at "
                                                 f"most {MAX_MESSAGE_BYTES}; got {len(data)}")
            if stream.seconds + len(data) / 2 / rate > max_seconds:
                raise StreamError("upload_too_large", f"the stream is over {max_seconds:g} s of audio "
                                                      "(--max_stream_seconds)")
            samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
            await _send_final(websocket, stream, await run_in_threadpool(stream.push, samples))
            now = stream.current
            if now != current:  # the turn in progress, or none (null) once every turn heard is final
                await websocket.send_json({"type": "current", "start": now[0] if now else None,
                                           "speaker": now[1] if now else None})
            current = now
        elif text is not None:
            try:
                kind = json.loads(text).get("type") if len(text) <= MAX_START_CHARS else None
            except (ValueError, AttributeError, RecursionError):
                kind = None
            if kind != "end":
                raise StreamError("bad_request", "a text message after the start is {\"type\": \"end\"}")
            await _send_final(websocket, stream, await run_in_threadpool(stream.close))
            result = stream.diarization()
            await websocket.send_json({"type": "done", "speakers": result.speakers,
                                       "num_speakers": result.num_speakers, "duration": round(result.duration_s, 3),
                                       "speech": round(result.speech_s, 3), "reason": result.reason or None})
            await websocket.close(1000)
            return


async def _send_final(websocket: WebSocket, stream, turns) -> None:
    """The turns that became final, {"type": "turn", ...} each, then the enrolled speakers recognised since the
    last call: {"type": "name", "speaker": "speaker_2", "name": "alice"} (the turns of speaker_2, those sent and
    those to come, are alice's)."""
    for start, end, speaker in turns:
        await websocket.send_json({"type": "turn", "start": start, "end": end, "speaker": speaker})
    for label, name in stream.new_names():
        await websocket.send_json({"type": "name", "speaker": label, "name": name})


async def _refuse(websocket: WebSocket, error: StreamError) -> None:
    if error.close == 1013 or error.code == "internal_error":
        log.warning("live stream refused: %s", error.code)
    try:
        await websocket.send_json({"type": "error", "error": {"code": error.code, "message": error.message}})
        await websocket.close(error.close)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client is gone already
