"""Live diarization over the service's WebSocket (/v1/diarize/stream, deep_speaker/service/live.py) through
FastAPI's TestClient: turns as they become final, the enrolled speaker named, the same turns as the
library's online diarizer, and the gates (key, scope, settings, streams, size) as one error message each."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from deep_speaker.service.app import create_app
from deep_speaker.service.keys import create_key
from deep_speaker.service.server import Service
from deep_speaker.service.settings import ServiceSettings
from serving import talk

PATH = "/v1/diarize/stream"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    database = tmp_path_factory.mktemp("live") / "speakers.db"
    return Service.start(f"sqlite:///{database}", ServiceSettings(workers=1, queue_size=1, requests_per_minute=100_000,
                                                                  max_streams=1, max_stream_seconds=60.0))


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(service):
    return {scope: create_key(service.store, [scope], name=f"live {scope}").key for scope in ("identify", "enrol")}


@pytest.fixture(scope="module")
def conversation(vctk_corpus, tmp_path_factory):
    """p239, p226, p239, p226 (real VCTK utterances, 0.8 s pauses) as 16-bit samples at 16 kHz."""
    path, turns = talk(vctk_corpus, ["p239_004", "p226_002", "p239_005", "p226_001"],
                       tmp_path_factory.mktemp("live-talk") / "talk.wav")
    samples, rate = soundfile.read(str(path), dtype="int16")
    return samples, rate, turns


def stream_through(client, start: dict, samples: np.ndarray, rate: int, block_s: float = 0.5) -> list[dict]:
    """Every message the server sends for one stream: start, audio in blocks, end."""
    with client.websocket_connect(PATH) as socket:
        socket.send_text(json.dumps(start))
        messages = [socket.receive_json()]
        assert messages[0]["type"] == "ready", messages
        step = int(block_s * rate)
        for offset in range(0, len(samples), step):
            socket.send_bytes(samples[offset:offset + step].tobytes())
        socket.send_text(json.dumps({"type": "end"}))
        while messages[-1]["type"] not in ("done", "error"):
            messages.append(socket.receive_json())
    return messages


def test_a_live_conversation_names_the_enrolled_speaker_as_it_goes(client, keys, conversation, vctk_corpus, service):
    samples, rate, truth = conversation
    # Ten recordings (all but the talk's): online, a name needs a cosine of 0.8 with the enrolment
    enrol = [vctk_corpus / "wav48" / "p239" / f"p239_{i:03d}.wav" for i in (1, 2, 3, 6, 7, 8, 9, 10, 11, 12)]
    answer = client.post("/v1/speakers/p239/enrol", headers={"Authorization": f"Bearer {keys['enrol']}"},
                         files=[("files", (f.name, f.read_bytes(), "audio/wav")) for f in enrol])
    assert answer.status_code == 201, answer.text
    try:
        messages = stream_through(client, {"key": keys["identify"], "sample_rate": rate}, samples, rate)
    finally:
        client.delete("/v1/speakers/p239", headers={"Authorization": f"Bearer {keys['enrol']}"})
    assert messages[0]["sample_rate"] == rate and messages[0]["named_from"] == 1
    names = {m["speaker"]: m["name"] for m in messages if m["type"] == "name"}
    assert list(names.values()) == ["p239"]  # recognised once, as an event
    turns = [(m["start"], m["end"], names.get(m["speaker"], m["speaker"])) for m in messages if m["type"] == "turn"]
    done = messages[-1]
    assert done["type"] == "done" and done["num_speakers"] == 2 and sorted(done["speakers"]) == ["p239", "speaker_2"]
    assert {"current"} <= {m["type"] for m in messages}  # the turn in progress was told along the way
    said = {}  # seconds of each true speaker under each label
    for start, end, label in turns:
        for true_start, true_end, who in truth:
            said[(label, who)] = said.get((label, who), 0.0) + max(0.0, min(end, true_end) - max(start, true_start))
    assert said[("p239", "p239")] > 4 * said.get(("p239", "p226"), 0.0)
    assert said[("speaker_2", "p226")] > 4 * said.get(("speaker_2", "p239"), 0.0)
    # The same turns as the library's online diarizer on the same samples (names aside).
    library = service.live.encoder().diarize_stream(rate)
    library.push(samples.astype(np.float32) / 32768.0)
    library.close()
    assert [(s, e) for s, e, _ in library.turns] == [(s, e) for s, e, _ in turns]


def refusal(client, start, headers=None, then: bytes | None = None) -> dict:
    with client.websocket_connect(PATH, headers=headers or {}) as socket:
        socket.send_text(start if isinstance(start, str) else json.dumps(start))
        message = socket.receive_json()
        if message["type"] == "ready":  # past the gates: then bytes (or nothing) and what comes of them
            if then is not None:
                socket.send_bytes(then)
            message = socket.receive_json()
        with pytest.raises(WebSocketDisconnect):
            socket.receive_json()
    assert message["type"] == "error", message
    return message["error"]


def test_the_gates_answer_one_error_each(client, keys):
    assert refusal(client, {"sample_rate": 16000})["code"] == "missing_key"
    assert refusal(client, {"key": "dsk_nope.nope", "sample_rate": 16000})["code"] == "invalid_key"
    forbidden = refusal(client, {"key": keys["enrol"]})
    assert forbidden["code"] == "forbidden" and "'identify' scope" in forbidden["message"]
    assert refusal(client, "not json")["code"] == "bad_request"
    bad_rate = refusal(client, {"key": keys["identify"], "sample_rate": 4000})
    assert bad_rate["code"] == "bad_request" and "sample_rate" in bad_rate["message"]
    assert refusal(client, {"key": keys["identify"], "max_speakers": 0})["code"] == "bad_request"
    odd = refusal(client, {"key": keys["identify"]}, then=b"\x00\x01\x02")
    assert odd["code"] == "bad_request" and "even number of bytes" in odd["message"]
    # The key in the handshake's Authorization header, as a non-browser client sends it.
    header = refusal(client, {"sample_rate": 4000}, headers={"Authorization": f"Bearer {keys['identify']}"})
    assert "sample_rate" in header["message"]  # past the key gate


def test_streams_are_bounded_in_number_and_length(client, keys, service):
    with client.websocket_connect(PATH) as first:  # max_streams=1: the only place
        first.send_text(json.dumps({"key": keys["identify"], "sample_rate": 8000}))
        assert first.receive_json()["type"] == "ready"
        busy = refusal(client, {"key": keys["identify"]})
        assert busy["code"] == "busy" and "--max_streams" in busy["message"]
        too_long = np.zeros(8000 * 61, np.int16)  # 61 s against max_stream_seconds=60
        first.send_bytes(too_long[: 8000 * 30].tobytes())
        first.send_bytes(too_long[8000 * 30:].tobytes())
        message = first.receive_json()
        while message["type"] != "error":
            message = first.receive_json()
        assert message["error"]["code"] == "upload_too_large" and "60 s" in message["error"]["message"]
    assert service.live.active == 0  # the place was given back
    assert refusal(client, {"key": keys["identify"]}, then=b"\x00" * ((1 << 20) + 2))["code"] == "bad_request"


def test_wrong_secrets_are_throttled_as_on_http(client, keys, service):
    from deep_speaker.service.keys import parse_key

    key_id = parse_key(keys["identify"])[0]
    wrong = keys["identify"][:-4] + ("aaaa" if not keys["identify"].endswith("aaaa") else "bbbb")
    assert parse_key(wrong)[0] == key_id
    for _ in range(10):
        assert refusal(client, {"key": wrong})["code"] == "invalid_key"
    assert not service.failed_keys.has_token(key_id)  # the WebSocket's guesses count as the HTTP API's do
    # ... and past 10 wrong secrets a minute the right one is refused too, with no scrypt run (as on HTTP)
    assert refusal(client, {"key": keys["identify"]})["code"] == "invalid_key"
    service.failed_keys._buckets.clear()
    assert client.get("/readyz", headers={"Authorization": f"Bearer {keys['identify']}"}).status_code == 200


def test_an_idle_or_vanished_client_gives_its_place_back(client, keys, service, monkeypatch):
    import deep_speaker.service.live as live

    monkeypatch.setattr(live, "IDLE_TIMEOUT_S", 0.5)
    idle = refusal(client, {"key": keys["identify"]})  # ready, then nothing sent
    assert idle["code"] == "bad_request" and "nothing received for 0.5 s" in idle["message"]
    assert service.live.active == 0
    with client.websocket_connect(PATH) as socket:  # a client that goes away mid-stream
        socket.send_text(json.dumps({"key": keys["identify"], "sample_rate": 16000}))
        assert socket.receive_json()["type"] == "ready"
        socket.send_bytes(np.zeros(16000, np.int16).tobytes())
    deadline = time.monotonic() + 5
    while service.live.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.live.active == 0
    bounded = refusal(client, {"key": keys["identify"], "max_speakers": 21})
    assert bounded["code"] == "bad_request" and "1-20" in bounded["message"]
