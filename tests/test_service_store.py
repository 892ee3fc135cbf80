"""The speaker service's store (deep_speaker/service/store.py) and its API keys
(keys.py), on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started for the session from the machine's own binaries
(Debian's `postgresql` package: initdb and pg_ctl, which .ci/run installs) in a
temp folder on a free port; where it cannot start, the PostgreSQL half is
skipped with the reason (and fails under CI=true, where it must run)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from conftest import free_ports, running_in_ci
from deep_speaker.config import Config
from deep_speaker.identification import Enrolment, enrolment_settings
from deep_speaker.scoring import speaker_embedding
from deep_speaker.service import store as store_module
from deep_speaker.service.keys import KeyChecker, allows, create_key, parse_key, revoke_key
from deep_speaker.service.store import (DatabaseError, ModelMismatch, ModelStamp, SpeakerExists, SpeakerNotFound,
                                        Store, StoreError, api_keys, database_url, speakers, utterances)

STAMP = ModelStamp("a" * 64, "/models/a/embedding.keras", enrolment_settings(Config()))
OTHER_MODEL = ModelStamp("b" * 64, "/models/b/embedding.keras", enrolment_settings(Config()))
OTHER_SETTINGS = ModelStamp("a" * 64, "/models/a/embedding.keras", enrolment_settings(Config(num_fbanks=40)))


def unit_rows(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --- a PostgreSQL server for the session ---------------------------------------------------------

def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    folders = ([str(Path(found).resolve().parent)] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                                                 reverse=True)
    for folder in folders:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _unavailable(reason: str):
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs Debian's postgresql, so it must start)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server():
    """postgresql://... of a throwaway server (a cluster made by initdb in a temp folder)."""
    binaries = _postgres_bin()
    if binaries is None:
        _unavailable("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="deep-speaker-postgres-"))
    owner = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as its own user (or nobody)
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(folder, account.pw_uid, account.pw_gid)
        owner = {"user": account.pw_uid, "group": account.pw_gid}
    port = free_ports(1)[0]
    data = folder / "data"
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run([str(binaries / "initdb"), "-D", str(data), "-U", "deep_speaker", "--auth=trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120, **owner)
        subprocess.run(pg_ctl + ["-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
                                 f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120, **owner)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        log = (folder / "server.log").read_text(errors="replace")[-300:] if (folder / "server.log").is_file() else ""
        shutil.rmtree(folder, ignore_errors=True)
        detail = getattr(error, "stderr", b"") or b""
        _unavailable(f"PostgreSQL did not start: {error}; {detail.decode(errors='replace')[-300:]} {log}".strip())
    try:
        yield f"postgresql://deep_speaker@127.0.0.1:{port}"
    finally:
        subprocess.run(pg_ctl + ["-m", "immediate", "stop"], capture_output=True, timeout=60, **owner)
        shutil.rmtree(folder, ignore_errors=True)


_databases = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty Store: an SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        opened = Store(f"sqlite:///{tmp_path / 'speakers.db'}")
    else:
        import psycopg

        server = request.getfixturevalue("postgres_server")
        name = f"speakers_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        opened = Store(f"{server}/{name}")
    yield opened
    opened.close()


# --- speakers ------------------------------------------------------------------------------------

def test_enrol_creates_then_adds_and_keeps_the_renormalised_mean(store):
    first, more = unit_rows(2, seed=1), unit_rows(3, seed=2)
    record, created = store.enrol("alice", first, STAMP, name="Alice A.")
    assert created and record.utterances == 2 and record.name == "Alice A." and record.model_sha256 == STAMP.sha256
    assert record.created == record.changed and record.created.tzinfo is not None
    _, mean = store.speaker_mean("alice")
    np.testing.assert_array_equal(mean, speaker_embedding(first))  # as Enrolment: the renormalised mean
    record, created = store.enrol("alice", more, STAMP)
    assert not created and record.utterances == 5 and record.name == "Alice A." and record.changed > record.created
    _, mean = store.speaker_mean("alice")
    np.testing.assert_array_equal(mean, speaker_embedding(np.concatenate([first, more])))
    embeddings, weights = store.utterance_embeddings("alice")
    np.testing.assert_array_equal(embeddings, np.concatenate([first, more]))
    assert weights == [1] * 5
    assert store.speaker("alice").recordings_kept == 0  # no audio unless --keep_audio
    assert [r.id for r in store.speakers()] == ["alice"] and store.count_speakers() == 1


def test_speakers_page_in_id_order(store):
    for name in ("c", "a", "b", "d"):
        store.enrol(name, unit_rows(1, seed=ord(name)), STAMP)
    assert [r.id for r in store.speakers(limit=3)] == ["a", "b", "c"]
    assert [r.id for r in store.speakers(limit=3, after="c")] == ["d"]
    snapshot = store.means(STAMP)
    assert snapshot.ids == ["a", "b", "c", "d"] and snapshot.matrix.shape == (4, 16)
    np.testing.assert_array_equal(snapshot.matrix[1], store.speaker_mean("b")[1])


def test_every_change_moves_the_generation_and_a_failed_one_does_not(store):
    start = store.generation()
    store.enrol("a", unit_rows(1), STAMP)
    store.enrol("a", unit_rows(1, seed=3), STAMP)
    store.delete_speaker("a")
    assert store.generation() == start + 3
    with pytest.raises(SpeakerNotFound):
        store.delete_speaker("a")
    assert store.generation() == start + 3


def test_an_enrolment_is_one_transaction(store, monkeypatch):
    """A failure after the speaker's row is written leaves no trace of it."""
    calls = []
    real = store_module._vector_bytes

    def failing(vector):
        calls.append(1)
        if len(calls) == 2:  # the first utterance row, after the speaker row was inserted
            raise RuntimeError("disk on fire")
        return real(vector)

    monkeypatch.setattr(store_module, "_vector_bytes", failing)
    with pytest.raises(RuntimeError):
        store.enrol("bob", unit_rows(2), STAMP)
    monkeypatch.setattr(store_module, "_vector_bytes", real)
    with pytest.raises(SpeakerNotFound):
        store.speaker("bob")
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(utterances)).scalar_one() == 0


def test_another_model_or_other_settings_are_refused(store):
    store.enrol("carol", unit_rows(2), STAMP)
    for other in (OTHER_MODEL, OTHER_SETTINGS):
        with pytest.raises(ModelMismatch, match="speaker 'carol'"):
            store.enrol("carol", unit_rows(1), other)
        with pytest.raises(ModelMismatch, match="1 enrolled speaker"):
            store.check_compatible(other)
        with pytest.raises(ModelMismatch):
            store.means(other)
    with pytest.raises(ModelMismatch, match="another model"):
        store.speaker("carol").check_compatible(OTHER_MODEL)
    with pytest.raises(ModelMismatch, match="num_fbanks"):
        store.speaker("carol").check_compatible(OTHER_SETTINGS)
    store.check_compatible(STAMP)
    assert store.speaker("carol").utterances == 2


def test_delete_erases_every_row_of_the_speaker(store):
    store.enrol("dave", unit_rows(3), STAMP, audio=[(b"RIFF....", "a.wav"), (b"fLaC", "b.flac"), (b"OggS", "c.ogg")])
    store.enrol("erin", unit_rows(2, seed=5), STAMP)
    assert store.speaker("dave").recordings_kept == 3
    assert store.delete_speaker("dave") == 3
    with store.engine.connect() as connection:
        for table, column in ((speakers, speakers.c.id), (utterances, utterances.c.speaker_id)):
            assert connection.execute(select(func.count()).select_from(table).where(column == "dave")).scalar_one() == 0
        assert connection.execute(select(func.count()).select_from(utterances).where(
            utterances.c.audio.is_not(None))).scalar_one() == 0
    assert store.means(STAMP).ids == ["erin"] and store.speaker("erin").utterances == 2
    with pytest.raises(SpeakerNotFound):
        store.speaker_mean("dave")


def test_enrolments_of_one_new_speaker_from_many_threads_all_count(store):
    """Concurrent writers queue up (SQLite: BEGIN IMMEDIATE; PostgreSQL: row lock after
    INSERT ... ON CONFLICT DO NOTHING): one speaker, every utterance counted."""
    errors = []

    def enrol(seed):
        try:
            for round_ in range(3):
                store.enrol("frank", unit_rows(1, seed=100 * seed + round_), STAMP)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=enrol, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    embeddings, weights = store.utterance_embeddings("frank")
    assert len(embeddings) == 12 and store.speaker("frank").utterances == 12
    np.testing.assert_allclose(store.speaker_mean("frank")[1], speaker_embedding(embeddings), atol=1e-7)


def test_speaker_ids_and_names_are_checked(store):
    for bad in ("unknown", "", "a/b", " padded", "x" * 129, "tab\there"):
        with pytest.raises(StoreError):
            store.enrol(bad, unit_rows(1), STAMP)
    with pytest.raises(StoreError, match="display name"):
        store.enrol("ok", unit_rows(1), STAMP, name="new\nline")
    store.enrol("Émile Zola 2", unit_rows(1), STAMP)
    assert store.speaker("Émile Zola 2").name == "Émile Zola 2"


# --- enrolment files -----------------------------------------------------------------------------

def test_enrolment_files_import_and_export_round_trip(store, tmp_path):
    means = unit_rows(3, seed=9)
    made = Enrolment(["p225", "p226", "p227"], means, [4, 2, 7], STAMP.identity, STAMP.settings)
    path = made.save(tmp_path / "made.npz")  # as identify.py --enroll writes it
    assert store.import_enrolment(Enrolment.load(path), STAMP, source=str(path)) == 3
    assert store.speaker("p227").utterances == 7
    out = store.export_enrolment().save(tmp_path / "exported.npz")
    back = Enrolment.load(out)
    assert back.speakers == made.speakers and back.utterances == made.utterances
    assert back.model == made.model and back.settings == made.settings
    np.testing.assert_allclose(back.embeddings, means, atol=1e-7)
    back.check_compatible(STAMP.identity, STAMP.settings)  # identify.py --enrolment accepts it
    assert Enrolment.load(store.export_enrolment(["p226"]).save(tmp_path / "one.npz")).speakers == ["p226"]
    with pytest.raises(SpeakerNotFound):
        store.export_enrolment(["p999"])

    with pytest.raises(SpeakerExists, match="--replace"):
        store.import_enrolment(made, STAMP)
    store.import_enrolment(Enrolment(["p225"], means[2:], [1], STAMP.identity, STAMP.settings), STAMP, replace=True)
    np.testing.assert_allclose(store.speaker_mean("p225")[1], means[2], atol=1e-7)
    assert store.speaker("p225").utterances == 1

    # An imported speaker keeps growing: its file's mean counts as the utterances it stood for.
    store.enrol("p227", means[:1], STAMP)
    expected = speaker_embedding(np.concatenate([np.repeat(means[2:3], 7, axis=0), means[:1]]))
    np.testing.assert_allclose(store.speaker_mean("p227")[1], expected, atol=1e-6)
    assert store.speaker("p227").utterances == 8


def test_an_enrolment_file_of_another_model_is_refused(store):
    other = Enrolment(["x"], unit_rows(1), [1], OTHER_MODEL.identity, OTHER_MODEL.settings)
    with pytest.raises(ModelMismatch, match="another model"):
        store.import_enrolment(other, STAMP, source="other.npz")
    with pytest.raises(StoreError, match="reserved"):
        store.import_enrolment(Enrolment(["unknown"], unit_rows(1), [1], STAMP.identity, STAMP.settings), STAMP)
    assert store.count_speakers() == 0


# --- API keys ------------------------------------------------------------------------------------

def _stored_text(store: Store) -> str:
    """Everything the database holds, as text: the raw SQLite files, or every key row."""
    if store.backend == "sqlite":
        base = Path(store.url.database)
        return "".join(p.read_bytes().decode("latin-1") for p in (base, Path(f"{base}-wal")) if p.is_file())
    with store.engine.connect() as connection:
        return repr(connection.execute(select(api_keys)).all())


def test_keys_are_stored_hashed_and_checked(store):
    made = create_key(store, ["verify", "identify"], name="call centre")
    key_id, secret = parse_key(made.key)
    assert key_id == made.record.id and made.record.scopes == ("verify", "identify")
    stored = _stored_text(store)
    assert key_id in stored and secret not in stored and made.key not in stored
    checker = KeyChecker(store)
    assert checker.check(made.key).id == key_id
    assert checker.check(made.key).id == key_id  # the second time from memory
    assert checker.check(made.key[:-1] + ("A" if made.key[-1] != "A" else "B")) is None
    assert checker.check("dsk_000000000000_" + secret) is None and checker.check("not a key") is None
    listed = store.keys()
    assert [(k.id, k.name, k.revoked) for k in listed] == [(key_id, "call centre", None)]
    assert revoke_key(store, made.key) == key_id
    assert checker.check(made.key) is None  # at once, though it was remembered
    assert store.key(key_id).revoked is not None
    with pytest.raises(Exception, match="no key"):
        revoke_key(store, "ffffffffffff")
    with pytest.raises(Exception, match="unknown scope"):
        create_key(store, ["everything"])
    assert allows(("admin",), "enrol") and not allows(("verify",), "identify")


# --- SQLite specifics and URLs -------------------------------------------------------------------

def test_sqlite_is_one_file_in_wal_mode_with_secure_delete(tmp_path):
    opened = Store(tmp_path / "sub" / "speakers.db")  # a plain path is an SQLite file; its folder is made
    opened.enrol("a", unit_rows(1), STAMP)
    with opened.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert opened.integrity_check() == "ok"
    opened.close()
    with sqlite3.connect(tmp_path / "sub" / "speakers.db") as raw:
        assert raw.execute("SELECT id FROM speakers").fetchall() == [("a",)]


def test_database_urls(tmp_path):
    assert database_url("postgres://u:secret@h/db").drivername == "postgresql+psycopg"
    assert database_url(tmp_path / "x.db").database == str(tmp_path / "x.db")
    for bad, reason in (("sqlite://", "in-memory"), ("sqlite:///:memory:", "in-memory"), ("mysql://h/db", "only SQLite"),
                        ("postgresql+psycopg2://h/db", "psycopg 3")):
        with pytest.raises(DatabaseError, match=reason):
            database_url(bad)
    assert "secret" not in store_module.shown_url(database_url("postgresql://u:secret@h/db"))


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseError, match="cannot open the database"):
        Store(f"sqlite:///{blocker}/speakers.db")
    port = free_ports(1)[0]
    with pytest.raises(DatabaseError, match="cannot open the database"):
        Store(f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=2")
