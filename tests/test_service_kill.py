"""The kill test of the speaker service (issue 28 §4): SIGKILL the server and its workers
while several clients are enrolling, start it again on the same SQLite database, and
every speaker is either fully enrolled (all the recordings of its request) or absent;
every enrolment the server acknowledged is there; the database passes its integrity check."""
from __future__ import annotations

import threading
import time

import httpx
from sqlalchemy import func, select

from conftest import need_real_speech
from deep_speaker.service.keys import create_key
from deep_speaker.service.store import Store, speakers, utterances
from serving import Server

CLIENTS = 4  # concurrent clients, each enrolling new speakers one after another
FILES = 3  # recordings in each enrol request


def test_sigkill_during_enrolments_leaves_each_speaker_whole_or_absent(tmp_path, vctk_corpus):
    recordings = sorted((vctk_corpus / "wav48" / "p239").glob("*.wav"))[:FILES]
    if len(recordings) < FILES:
        need_real_speech(f"{vctk_corpus}/wav48/p239: fewer than {FILES} recordings")
    payload = [("files", (path.name, path.read_bytes(), "audio/wav")) for path in recordings]
    database = f"sqlite:///{tmp_path / 'speakers.db'}"
    store = Store(database)
    key = create_key(store, ["admin"], name="kill test").key
    store.close()
    headers = {"Authorization": f"Bearer {key}"}
    acknowledged: set[str] = set()  # answered 201 before the kill
    attempted: set[str] = set()
    unexpected: list[str] = []
    stop = threading.Event()

    def enrol_until_the_server_dies(client: int, base: str) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            for number in range(10_000):
                if stop.is_set():
                    return
                name = f"c{client}-{number:04d}"
                attempted.add(name)
                try:
                    answer = http.post(f"/v1/speakers/{name}/enrol", files=payload)
                except httpx.HTTPError:  # the connection died with the server
                    return
                if answer.status_code == 201:
                    acknowledged.add(name)
                else:
                    unexpected.append(f"{name}: {answer.status_code} {answer.text}")
                    return

    server = Server(database, tmp_path, "--queue_size", str(2 * CLIENTS)).wait_ready()
    try:
        clients = [threading.Thread(target=enrol_until_the_server_dies, args=(i, server.base)) for i in range(CLIENTS)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 2 * CLIENTS or httpx.get(f"{server.base}/readyz", headers=headers,
                                                             timeout=5).json()["in_flight"] < CLIENTS - 1:
            assert time.monotonic() < deadline and not unexpected, (unexpected, server.log())
            time.sleep(0.01)
        server.kill()  # the server and its workers, in the middle of enrolments
        stop.set()
        for thread in clients:
            thread.join(60)
    finally:
        server.__exit__(None, None, None)
    assert not unexpected, unexpected
    in_flight = attempted - acknowledged
    assert 1 <= len(in_flight) <= CLIENTS  # at most one per client was cut off

    with Server(database, tmp_path).wait_ready() as again:  # the same database, after the crash
        listed = httpx.get(f"{again.base}/v1/speakers", params={"limit": 1000}, headers=headers, timeout=10).json()
        enrolled = {speaker["id"]: speaker["utterances"] for speaker in listed["speakers"]}
        assert acknowledged <= set(enrolled) <= attempted  # nothing acknowledged was lost, nothing invented
        assert set(enrolled.values()) == {FILES}  # each speaker whole
        cut_off = sorted(in_flight - set(enrolled))
        if cut_off:  # an enrolment the crash cut off can simply be sent again
            again_answer = httpx.post(f"{again.base}/v1/speakers/{cut_off[0]}/enrol", files=payload, headers=headers,
                                      timeout=60)
            assert again_answer.status_code == 201, again_answer.text
            enrolled[cut_off[0]] = FILES

    store = Store(database)
    try:
        assert store.integrity_check() == "ok"
        with store.engine.connect() as connection:
            rows = dict(connection.execute(select(utterances.c.speaker_id, func.count())
                                           .group_by(utterances.c.speaker_id)).all())
            counted = dict(connection.execute(select(speakers.c.id, speakers.c.utterances)).all())
        assert rows == counted == enrolled  # no utterance row without its speaker, none missing
    finally:
        store.close()
