"""The speaker service's HTTP API (deep_speaker/service/app.py) through FastAPI's
TestClient, with a real model worker and real speech from ../shared/data.

One service (SQLite in a temp folder, one worker process) serves the whole module;
tests that change its limits put them back."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import REPO_ROOT, need_real_speech, write_audio_file
from deep_speaker.service.app import create_app
from deep_speaker.service.keys import SCOPES, create_key, parse_key
from deep_speaker.service.pool import WorkerLost
from deep_speaker.service.server import RateLimiter, Service
from deep_speaker.service.settings import ServiceSettings
from deep_speaker.service.store import ModelStamp, speakers, utterances
from serving import talk

SPEAKER_COUNT = 12  # the check: 12 speakers, 3 utterances enrolled and 2 identified each


def heldout_speakers(shared_data: Path) -> dict[str, list[Path]]:
    """5 recordings (2-6 s, 8 kHz) of each of the first 12 speechocean762 speakers the
    shipped model never trained on (scripts/pretrained_heldout.txt)."""
    lines = (REPO_ROOT / "scripts" / "pretrained_heldout.txt").read_text().splitlines()
    names = [line.split()[1] for line in lines if line.startswith("speechocean762 ")]
    chosen = {}
    for name in names:
        files = sorted((shared_data / "speechocean762" / name).glob("*.flac"))[:5]
        if len(files) == 5:
            chosen[name] = files
        if len(chosen) == SPEAKER_COUNT:
            return chosen
    need_real_speech(f"{shared_data / 'speechocean762'}: fewer than {SPEAKER_COUNT} held-out speakers with 5 files")


@pytest.fixture(scope="module")
def voices(shared_data):
    return heldout_speakers(shared_data)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    database = tmp_path_factory.mktemp("service") / "speakers.db"
    return Service.start(f"sqlite:///{database}", ServiceSettings(workers=1, queue_size=2, requests_per_minute=100_000))


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service), raise_server_exceptions=False) as test_client:
        yield test_client  # leaving closes the service (the app's lifespan)


@pytest.fixture(scope="module")
def keys(service):
    """A key for each scope alone."""
    return {scope: create_key(service.store, [scope], name=f"test {scope}").key for scope in SCOPES}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(path: Path, field: str = "file"):
    return (field, (path.name, path.read_bytes(), "application/octet-stream"))


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    assert "Traceback" not in response.text and "/tmp/" not in response.text
    return body["error"]["message"]


@contextmanager
def limits(service: Service, **changes):
    saved = service.settings
    service.settings = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        service.settings = saved


# --- keys and scopes -----------------------------------------------------------------------------

def test_every_call_but_healthz_needs_a_valid_key(client, keys):
    assert client.get("/healthz").json() == {"status": "ok"}
    for method, path in (("GET", "/readyz"), ("GET", "/v1/speakers"), ("POST", "/v1/identify"),
                         ("DELETE", "/v1/speakers/x"), ("GET", "/openapi.json"), ("GET", "/no/such/path")):
        response = client.request(method, path)
        assert_error(response, 401, "missing_key")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert_error(client.request(method, path, headers=auth(keys["admin"][:-2] + "xx")), 401, "invalid_key")
        assert_error(client.request(method, path, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "missing_key")
    ready = client.get("/readyz", headers=auth(keys["embed"])).json()
    assert ready["ready"] and ready["runtime"] == "onnx" and ready["score_kind"] == "as-norm"
    assert_error(client.get("/no/such/path", headers=auth(keys["admin"])), 404, "not_found")


def test_a_key_without_the_scope_gets_403(client, keys, voices):
    first = next(iter(voices.values()))[0]
    assert_error(client.post("/v1/identify", headers=auth(keys["embed"]), files=[upload(first)]), 403, "forbidden")
    assert_error(client.post("/v1/embed", headers=auth(keys["verify"]), files=[upload(first)]), 403, "forbidden")
    assert_error(client.get("/v1/speakers", headers=auth(keys["identify"])), 403, "forbidden")
    assert_error(client.delete("/v1/speakers/x", headers=auth(keys["verify"])), 403, "forbidden")
    assert client.post("/v1/embed", headers=auth(keys["admin"]), files=[upload(first)]).status_code == 200


def test_the_openapi_document_is_generated_with_each_scope(client, keys):
    document = client.get("/openapi.json", headers=auth(keys["embed"])).json()
    operations = {(method.upper(), path): operation for path, item in document["paths"].items()
                  for method, operation in item.items()}
    expected = {("POST", "/v1/embed"): "embed", ("POST", "/v1/verify"): "verify", ("POST", "/v1/identify"): "identify",
                ("POST", "/v1/speakers/{speaker_id}/enrol"): "enrol", ("GET", "/v1/speakers"): "enrol",
                ("GET", "/v1/speakers/{speaker_id}"): "enrol", ("DELETE", "/v1/speakers/{speaker_id}"): "enrol",
                ("POST", "/v1/diarize"): "identify"}
    for operation, scope in expected.items():
        assert operations[operation]["x-scope"] == scope
    assert {("GET", "/healthz"), ("GET", "/readyz")} <= set(operations)


# --- the check: 12 speakers over HTTP, as identify.py identifies them -------------------

def test_twelve_speakers_enrolled_and_identified_as_identify_py_does(client, keys, voices, service):
    from deep_speaker.encoder import SpeakerEncoder

    for name, files in voices.items():
        response = client.post(f"/v1/speakers/{name}/enrol", headers=auth(keys["enrol"]),
                               files=[upload(f, "files") for f in files[:3]])
        assert response.status_code == 201, response.text
        assert response.json()["speaker"]["utterances"] == 3 and response.json()["created"]
    listed = client.get("/v1/speakers", headers=auth(keys["enrol"])).json()
    assert {s["id"] for s in listed["speakers"]} >= set(voices)

    answers = {}
    for name, files in voices.items():
        for query in files[3:]:
            response = client.post("/v1/identify", headers=auth(keys["identify"]),
                                   files=[upload(query)], data={"top_k": "3"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) >= {"speaker", "matches"} and len(body["matches"]) == 3
            assert [m["score"] for m in body["matches"]] == sorted((m["score"] for m in body["matches"]), reverse=True)
            answers[str(query)] = body

    # identify.py's way: SpeakerEncoder.enroll and .identify on the same files, in this process.
    encoder = SpeakerEncoder(workers=1)
    enrolment = encoder.enroll({name: files[:3] for name, files in voices.items()})
    queries = [str(f) for files in voices.values() for f in files[3:]]
    expected = encoder.identify(queries, enrolment, top_k=3)
    truth = [Path(q).parent.name for q in queries]
    service_top1 = np.mean([answers[q]["speaker"] == t for q, t in zip(queries, truth)])
    reference_top1 = np.mean([found.speaker == t for found, t in zip(expected, truth)])
    print(f"top-1 accuracy: service {service_top1:.3f}, identify.py {reference_top1:.3f}")
    assert service_top1 == reference_top1 and service_top1 >= 0.75, (service_top1, reference_top1)
    for query, found in zip(queries, expected):
        assert answers[query]["speaker"] == found.speaker
        assert [m["speaker"] for m in answers[query]["matches"]] == [m.speaker for m in found.matches]
        np.testing.assert_allclose([m["score"] for m in answers[query]["matches"]],
                                   [m.similarity for m in found.matches], atol=1e-5)
    assert answers[queries[0]]["threshold"] == pytest.approx(encoder.threshold)


def test_verify_two_recordings_or_a_recording_and_a_speaker(client, keys, voices, service):
    (a, files_a), (b, files_b) = list(voices.items())[:2]
    same = client.post("/v1/verify", headers=auth(keys["verify"]),
                       files=[upload(files_a[0]), upload(files_a[1], "file2")]).json()
    other = client.post("/v1/verify", headers=auth(keys["verify"]),
                        files=[upload(files_a[0]), upload(files_b[0], "file2")]).json()
    assert same["score_kind"] == "as-norm" and same["threshold"] == pytest.approx(service.model["score_threshold"])
    assert same["score"] > other["score"] and same["same_speaker"] == (same["score"] >= same["threshold"])
    assert set(same) >= {"score", "threshold", "same_speaker", "similarity"}
    client.post(f"/v1/speakers/{a}/enrol", headers=auth(keys["enrol"]), files=[upload(f, "files") for f in files_a[:3]])
    against = client.post("/v1/verify", headers=auth(keys["verify"]), files=[upload(files_a[4])],
                          data={"speaker": a, "threshold": "-100"}).json()
    assert against["speaker"] == a and against["threshold"] == -100 and against["same_speaker"] is True
    assert_error(client.post("/v1/verify", headers=auth(keys["verify"]), files=[upload(files_a[4])],
                             data={"speaker": "nobody-here"}), 404, "speaker_not_found")
    assert_error(client.post("/v1/verify", headers=auth(keys["verify"]), files=[upload(files_a[4])]),
                 400, "bad_request")
    assert_error(client.post("/v1/verify", headers=auth(keys["verify"]), files=[upload(files_a[4])],
                             data={"speaker": a, "threshold": "nan"}), 400, "bad_request")


def test_embed_returns_the_encoders_embedding(client, keys, voices):
    from deep_speaker.encoder import SpeakerEncoder

    path = next(iter(voices.values()))[0]
    body = client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(path)]).json()
    assert body["dim"] == len(body["embedding"]) == 512
    np.testing.assert_allclose(body["embedding"], SpeakerEncoder(workers=1).embed_file(path), atol=1e-6)


# --- diarization: who spoke when, enrolled speakers by name ---------------------------------------

def test_diarize_names_the_enrolled_speaker_and_numbers_the_other(client, keys, vctk_corpus, tmp_path):
    # p239, p226, p239, p226, with 0.8 s pauses: real utterances, p239's not among those enrolled
    recording, turns = talk(vctk_corpus, ["p239_004", "p226_002", "p239_005", "p226_001"], tmp_path / "talk.wav")
    enrol = [vctk_corpus / "wav48" / "p239" / f"p239_00{i}.wav" for i in (1, 2, 3)]  # not in the talk
    assert client.post("/v1/speakers/p239/enrol", headers=auth(keys["enrol"]),
                       files=[upload(f, "files") for f in enrol]).status_code == 201
    try:
        body = client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(recording)]).json()
        assert set(body) == {"segments", "speakers", "num_speakers", "duration", "speech", "reason"}, body
        assert body["reason"] is None and body["num_speakers"] == 2
        assert sorted(body["speakers"]) == ["p239", "speaker_1"]
        assert body["duration"] == pytest.approx(turns[-1][1] + 0.8, abs=0.05)

        def said(segments, label):  # seconds of each true speaker's turns under `label`
            seconds = {"p239": 0.0, "p226": 0.0}
            for segment in (s for s in segments if s["speaker"] == label):
                for start, end, who in turns:
                    seconds[who] += max(0.0, min(end, segment["end"]) - max(start, segment["start"]))
            return seconds
        named, other = said(body["segments"], "p239"), said(body["segments"], "speaker_1")
        assert named["p239"] > 4 * named["p226"] and other["p226"] > 4 * other["p239"], (named, other)

        again = client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(recording)]).json()
        assert again == body  # the worker's enrolment of this generation, kept
        plain = client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(recording)],
                            data={"names": "false", "num_speakers": "2"}).json()
        assert plain["speakers"] == ["speaker_1", "speaker_2"]
        rttm = client.post("/v1/diarize?format=rttm", headers=auth(keys["identify"]), files=[upload(recording)])
        assert rttm.status_code == 200 and rttm.headers["content-type"].startswith("text/plain")
        lines = rttm.text.splitlines()
        assert len(lines) == len(body["segments"])
        for line, segment in zip(lines, body["segments"]):
            fields = line.split()
            assert fields[:3] == ["SPEAKER", "talk", "1"] and fields[7] == segment["speaker"]
            assert float(fields[3]) == pytest.approx(segment["start"], abs=1e-3)
            assert float(fields[4]) == pytest.approx(segment["end"] - segment["start"], abs=2e-3)
    finally:
        client.delete("/v1/speakers/p239", headers=auth(keys["enrol"]))


def test_diarize_without_speech_is_empty_with_the_reason_and_keeps_the_gates(client, keys, service, tmp_path):
    silence = write_audio_file(tmp_path / "silence.wav", "silence", 16000, seconds=3.0)
    response = client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(silence)])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segments"] == [] and body["speakers"] == [] and body["num_speakers"] == 0
    assert body["reason"].startswith("no speech")
    assert client.post("/v1/diarize?format=rttm", headers=auth(keys["identify"]), files=[upload(silence)]).text == ""
    assert_error(client.post("/v1/diarize", files=[upload(silence)]), 401, "missing_key")
    assert_error(client.post("/v1/diarize", headers=auth(keys["embed"]), files=[upload(silence)]), 403, "forbidden")
    for counts in ({"num_speakers": "0"}, {"num_speakers": "2", "max_speakers": "3"},
                   {"min_speakers": "3", "max_speakers": "2"}, {"num_speakers": "two"}):
        assert_error(client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(silence)], data=counts),
                     400, "bad_request")
    assert_error(client.post("/v1/diarize?format=xml", headers=auth(keys["identify"]), files=[upload(silence)]),
                 400, "bad_request")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01not audio at all" * 64)
    assert_error(client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(garbage)]),
                 400, "undecodable_audio")
    with limits(service, max_audio_seconds=2.0):
        assert_error(client.post("/v1/diarize", headers=auth(keys["identify"]), files=[upload(silence)]),
                     413, "audio_too_long")


# --- errors: one shape, the expected codes -------------------------------------------------------

def test_undecodable_files_get_400_with_the_commands_reason(client, keys, tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01not audio at all" * 64)
    message = assert_error(client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(garbage)]),
                           400, "undecodable_audio")
    assert message.startswith("file (garbage.wav): not decodable audio")
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    assert "empty file" in assert_error(client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(empty)]),
                                        400, "undecodable_audio")
    assert_error(client.post("/v1/embed", headers=auth(keys["embed"]), data={"file": "text"}), 400, "bad_request")


def test_noise_and_silence_get_422(client, keys, tmp_path):
    noise = write_audio_file(tmp_path / "noise.wav", "noise", 16000, seconds=3.0, amplitude=0.1)
    message = assert_error(client.post("/v1/identify", headers=auth(keys["identify"]), files=[upload(noise)]),
                           422, "no_speech")
    assert message.startswith("file (noise.wav): ")
    silence = write_audio_file(tmp_path / "silence.wav", "silence", 16000, seconds=2.0)
    assert_error(client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(silence)]),
                 422, "too_little_speech")


def test_uploads_over_the_limits_get_413(client, keys, voices, service):
    files = next(iter(voices.values()))
    with limits(service, max_upload_bytes=20_000):
        assert files[0].stat().st_size > 20_000
        assert_error(client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(files[0])]),
                     413, "upload_too_large")
        # A body without Content-Length (chunked) is counted as it arrives.
        chunks = iter([b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"]
                      + [b"\x00" * 8192] * 4 + [b"\r\n--b--\r\n"])
        response = client.post("/v1/embed", content=chunks, headers={
            **auth(keys["embed"]), "Content-Type": "multipart/form-data; boundary=b"})
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert_error(response, 413, "upload_too_large")
    with limits(service, max_audio_seconds=1.5):
        message = assert_error(client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(files[0])]),
                               413, "audio_too_long")
        assert "at most 1.5 s" in message
    with limits(service, max_files=2):
        assert_error(client.post("/v1/speakers/too-many/enrol", headers=auth(keys["enrol"]),
                                 files=[upload(f, "files") for f in files[:3]]), 413, "too_many_files")
    assert_error(client.get("/v1/speakers/too-many", headers=auth(keys["enrol"])), 404, "speaker_not_found")


def test_over_the_rate_limit_gets_429(client, keys, service):
    saved = service.rate
    service.rate = RateLimiter(2)
    try:
        assert client.get("/readyz", headers=auth(keys["verify"])).status_code == 200
        assert client.get("/readyz", headers=auth(keys["verify"])).status_code == 200
        response = client.get("/readyz", headers=auth(keys["verify"]))
        assert_error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= 30
        assert client.get("/readyz", headers=auth(keys["embed"])).status_code == 200  # per key
    finally:
        service.rate = saved


def test_a_full_queue_gets_503_with_retry_after_and_then_serves_again(client, keys, voices, service):
    path = next(iter(voices.values()))[0]
    tickets = [service.pool.admit() for _ in range(service.pool.capacity)]
    try:
        response = client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(path)])
        assert_error(response, 503, "busy")
        assert int(response.headers["Retry-After"]) >= 1
        assert client.get("/v1/speakers", headers=auth(keys["enrol"])).status_code == 200  # no model work: served
    finally:
        for ticket in tickets:
            ticket.release()
    assert service.pool.in_flight == 0
    assert client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(path)]).status_code == 200


def test_a_worker_that_dies_is_replaced(client, keys, voices, service):
    with pytest.raises(WorkerLost):
        asyncio.run(service.pool.run(os._exit, 3))
    path = next(iter(voices.values()))[0]
    assert client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(path)]).status_code == 200


def test_an_internal_error_is_500_without_a_traceback(client, keys, service, monkeypatch):
    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service.store, "speakers", broken)
    message = assert_error(client.get("/v1/speakers", headers=auth(keys["enrol"])), 500, "internal_error")
    assert "secret" not in message


# --- speakers: delete, other models, kept audio ---------------------------------------------------

def test_delete_erases_the_speaker_and_identify_forgets_it(client, keys, voices, service):
    name, files = list(voices.items())[-1]
    created = client.post("/v1/speakers/to-erase/enrol", headers=auth(keys["enrol"]),
                          files=[upload(f, "files") for f in files[:2]], data={"name": "Erase Me"})
    assert created.status_code == 201 and created.json()["speaker"]["name"] == "Erase Me"
    added = client.post("/v1/speakers/to-erase/enrol", headers=auth(keys["enrol"]), files=[upload(files[2], "files")])
    assert added.status_code == 200 and added.json()["speaker"]["utterances"] == 3
    assert client.get("/v1/speakers/to-erase", headers=auth(keys["enrol"])).json()["utterances"] == 3
    response = client.delete("/v1/speakers/to-erase", headers=auth(keys["enrol"]))
    assert response.json() == {"deleted": "to-erase", "utterances": 3}
    assert_error(client.get("/v1/speakers/to-erase", headers=auth(keys["enrol"])), 404, "speaker_not_found")
    assert_error(client.delete("/v1/speakers/to-erase", headers=auth(keys["enrol"])), 404, "speaker_not_found")
    with service.store.engine.connect() as connection:
        for table, column in ((speakers, speakers.c.id), (utterances, utterances.c.speaker_id)):
            assert connection.execute(select(func.count()).select_from(table).where(
                column == "to-erase")).scalar_one() == 0
    found = client.post("/v1/identify", headers=auth(keys["identify"]), files=[upload(files[4])],
                        data={"top_k": "100"}).json()
    assert "to-erase" not in {m["speaker"] for m in found["matches"]}
    assert_error(client.post("/v1/speakers/unknown/enrol", headers=auth(keys["enrol"]),
                             files=[upload(files[0], "files")]), 400, "bad_request")


def test_a_speaker_of_another_model_is_refused_with_409(client, keys, voices, service):
    files = next(iter(voices.values()))
    other = ModelStamp("f" * 64, "/elsewhere/embedding.keras", service.stamp.settings)
    service.store.enrol("from-another-model", np.eye(1, 512, dtype=np.float32), other)
    try:
        assert "another model" in assert_error(client.post(
            "/v1/speakers/from-another-model/enrol", headers=auth(keys["enrol"]), files=[upload(files[0], "files")]),
            409, "model_mismatch")
        assert_error(client.post("/v1/verify", headers=auth(keys["verify"]), files=[upload(files[0])],
                                 data={"speaker": "from-another-model"}), 409, "model_mismatch")
        assert_error(client.post("/v1/identify", headers=auth(keys["identify"]), files=[upload(files[0])]),
                     409, "model_mismatch")
    finally:
        service.store.delete_speaker("from-another-model")
    assert client.post("/v1/identify", headers=auth(keys["identify"]), files=[upload(files[0])]).status_code == 200


def test_recordings_are_kept_only_with_keep_audio(client, keys, voices, service):
    files = list(voices.values())[1]
    client.post("/v1/speakers/no-audio/enrol", headers=auth(keys["enrol"]), files=[upload(files[0], "files")])
    assert client.get("/v1/speakers/no-audio", headers=auth(keys["enrol"])).json()["recordings_kept"] == 0
    with limits(service, keep_audio=True):
        client.post("/v1/speakers/with-audio/enrol", headers=auth(keys["enrol"]), files=[upload(files[0], "files")])
    assert client.get("/v1/speakers/with-audio", headers=auth(keys["enrol"])).json()["recordings_kept"] == 1
    with service.store.engine.connect() as connection:
        kept = connection.execute(select(utterances.c.audio).where(utterances.c.speaker_id == "with-audio")).scalar()
    assert kept == files[0].read_bytes()
    for name in ("no-audio", "with-audio"):
        client.delete(f"/v1/speakers/{name}", headers=auth(keys["enrol"]))


def test_logs_hold_no_key_audio_or_embedding(client, keys, voices, caplog):
    path = next(iter(voices.values()))[0]
    with caplog.at_level("DEBUG"):
        client.post("/v1/embed", headers=auth(keys["embed"]), files=[upload(path)])
        client.get("/readyz", headers=auth(keys["admin"][:-1] + "Q"))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for key in keys.values():
        assert key not in logged and parse_key(key)[1] not in logged
    assert not re.search(r"-?0\.\d{5,}(, -?0\.\d{5,}){10}", logged)  # no run of embedding values


def test_a_database_that_stops_answering_gets_503(client, keys, service, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def down(*args):
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(service.store, "key", down)
    service.keys._verified.clear()
    assert_error(client.get("/v1/speakers", headers=auth(keys["enrol"])), 503, "database_unavailable")
