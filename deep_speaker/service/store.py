"""Enrolments and API keys in a SQL database: SQLite by default, PostgreSQL from a URL.

One schema, written with SQLAlchemy Core, runs on both. SQLite is one file in WAL
mode (readers never wait for the writer), with foreign keys on, `synchronous=FULL`
(a committed enrolment or erasure survives a power cut) and `secure_delete=ON`
(an erased speaker's pages are overwritten with zeros, not left in free pages);
every write is one `BEGIN IMMEDIATE` transaction, so concurrent writers queue up
instead of failing half-way. PostgreSQL (``postgresql://user@host/db``, run by
psycopg 3) gets the same transactions; an enrolment locks its speaker's row.

Tables:

- ``speakers``: id, display name, the model's SHA-256 and path and its feature
  settings (`deep_speaker.identification.enrolment_settings`, as JSON), the
  renormalised mean of the speaker's utterance embeddings (float32 bytes), the
  number of utterances behind it, and when it was made and last changed;
- ``utterances``: one row per enrolled recording: its embedding, its weight in the
  mean (1; an imported speaker is one row weighted by the utterances its
  enrolment file counted), and its audio only when the server runs with
  ``--keep_audio``;
- ``api_keys``: key id, name, scopes, scrypt salt and hash (never the key), when
  made and when revoked (`deep_speaker.service.keys`);
- ``store_info`` (the schema version) and ``generation``: a counter every write
  raises in its own transaction, so a server can tell that its in-memory copy of
  the means (what `identify` searches) is stale with one cheap query.

Every change of a speaker (enrol, import, delete) is one transaction: a speaker is
either fully enrolled or absent, also after a crash.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (BigInteger, Column, DateTime, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text,
                        TypeDecorator, create_engine, delete, event, func, select, update)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from deep_speaker.errors import InputError
from deep_speaker.identification import Enrolment, EnrolmentError
from deep_speaker.scoring import speaker_embedding

SCHEMA_VERSION = 1
MAX_SPEAKER_ID = 128
MAX_NAME = 200
UNKNOWN = "unknown"  # what identify answers below the threshold: never a speaker id
_SPEAKER_ID = re.compile(r"[^\x00-\x1f\x7f/\\]{1,128}")


class StoreError(InputError):
    """A request the store refuses; the message says why, on one line."""


class SpeakerNotFound(StoreError):
    pass


class SpeakerExists(StoreError):
    pass


class ModelMismatch(StoreError):
    """Rows made with another model or other feature settings than the server's."""


class DatabaseError(StoreError):
    """The database cannot be opened or used (bad URL, server down, newer schema)."""


class _UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps none)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


_ROW_ID = BigInteger().with_variant(Integer, "sqlite")  # INTEGER PRIMARY KEY autoincrements on SQLite

metadata = MetaData()
speakers = Table(
    "speakers", metadata,
    Column("id", String(MAX_SPEAKER_ID), primary_key=True),
    Column("name", String(MAX_NAME), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("model_path", Text, nullable=False),
    Column("settings", Text, nullable=False),
    Column("dim", Integer, nullable=False),
    Column("mean", LargeBinary, nullable=False),
    Column("utterances", Integer, nullable=False),
    Column("created_at", _UTCDateTime, nullable=False),
    Column("changed_at", _UTCDateTime, nullable=False),
)
utterances = Table(
    "utterances", metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("speaker_id", String(MAX_SPEAKER_ID), ForeignKey("speakers.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("embedding", LargeBinary, nullable=False),
    Column("weight", Integer, nullable=False),
    Column("source", String(16), nullable=False),  # "upload" or "import"
    Column("audio", LargeBinary, nullable=True),  # only with --keep_audio
    Column("audio_name", String(MAX_NAME), nullable=True),
    Column("created_at", _UTCDateTime, nullable=False),
)
api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(MAX_NAME), nullable=False),
    Column("scopes", String(200), nullable=False),  # space-separated
    Column("kdf", String(64), nullable=False),  # "scrypt:n:r:p"
    Column("salt", String(64), nullable=False),  # hex
    Column("hash", String(128), nullable=False),  # hex
    Column("created_at", _UTCDateTime, nullable=False),
    Column("revoked_at", _UTCDateTime, nullable=True),
)
store_info = Table(
    "store_info", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
generation = Table(
    "generation", metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def check_speaker_id(speaker_id: str) -> str:
    """A speaker id as the API and the store accept it: 1-128 characters, no control
    characters or slashes, no surrounding spaces, and not "unknown".

    >>> check_speaker_id("p225")
    'p225'
    >>> check_speaker_id("unknown")
    Traceback (most recent call last):
    ...
    deep_speaker.service.store.StoreError: speaker id 'unknown' is reserved: identify answers it below the threshold
    """
    if not isinstance(speaker_id, str) or not _SPEAKER_ID.fullmatch(speaker_id) or speaker_id != speaker_id.strip():
        raise StoreError(f"speaker id {str(speaker_id)[:40]!r} is not valid: 1-{MAX_SPEAKER_ID} characters, no "
                         f"slashes or control characters, no leading or trailing spaces")
    if speaker_id == UNKNOWN:
        raise StoreError(f"speaker id {UNKNOWN!r} is reserved: identify answers it below the threshold")
    return speaker_id


def check_name(name: str) -> str:
    if len(name) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise StoreError(f"display name: at most {MAX_NAME} printable characters")
    return name


@dataclass(frozen=True)
class ModelStamp:
    """The model rows must have been made with: SHA-256 and path of its .keras file
    (`identification.model_identity`) and `identification.enrolment_settings`."""

    sha256: str
    path: str
    settings: dict[str, Any]

    @classmethod
    def of(cls, identity: dict[str, str], settings: dict[str, Any]) -> "ModelStamp":
        return cls(identity["sha256"], identity["path"], dict(settings))

    @property
    def identity(self) -> dict[str, str]:
        return {"sha256": self.sha256, "path": self.path}

    @property
    def settings_json(self) -> str:
        return json.dumps(self.settings, sort_keys=True)


@dataclass(frozen=True)
class SpeakerRecord:
    """One enrolled speaker, without its embeddings."""

    id: str
    name: str
    utterances: int
    model_sha256: str
    model_path: str
    settings: dict[str, Any]
    created: datetime
    changed: datetime
    recordings_kept: int | None = None  # filled by Store.speaker only

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "name": self.name, "utterances": self.utterances, "model_sha256": self.model_sha256,
               "created": self.created.isoformat(), "changed": self.changed.isoformat()}
        if self.recordings_kept is not None:
            out["recordings_kept"] = self.recordings_kept
        return out

    def check_compatible(self, stamp: ModelStamp) -> None:
        """ModelMismatch when this speaker was enrolled with another model or other settings
        (the check and the message of identify.py, `Enrolment.check_compatible`)."""
        enrolment = Enrolment([self.id], np.zeros((1, 1), np.float32), [self.utterances],
                              {"sha256": self.model_sha256, "path": self.model_path}, self.settings)
        try:
            enrolment.check_compatible(stamp.identity, stamp.settings, f"speaker {self.id!r}")
        except EnrolmentError as error:
            raise ModelMismatch(str(error)) from None


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    scopes: tuple[str, ...]
    kdf: str
    salt: str
    hash: str
    created: datetime
    revoked: datetime | None = None


@dataclass(frozen=True)
class MeansSnapshot:
    """Every enrolled speaker's mean, as `identify` searches them."""

    generation: int
    ids: list[str] = field(default_factory=list)
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (n, dim) unit rows


def database_url(text: str | Path) -> URL:
    """The SQLAlchemy URL of --database: a sqlite:/// or postgresql:// URL, or a plain
    file path (an SQLite file). PostgreSQL runs through psycopg 3; anything else,
    and an in-memory SQLite database (the service needs one shared file), is refused.

    >>> str(database_url("postgresql://me@db.example/speakers"))
    'postgresql+psycopg://me@db.example/speakers'
    >>> database_url("sqlite:///speakers.db").database
    'speakers.db'
    """
    text = str(text)
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().resolve()))
    try:
        url = make_url(text)
    except ArgumentError:
        raise DatabaseError(f"--database {text.split('://')[0]}://...: not a database URL") from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise DatabaseError(f"--database {url.drivername}://: PostgreSQL runs through psycopg 3 here; "
                                f"write postgresql://...")
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
            raise DatabaseError("--database sqlite://: an in-memory database would vanish with the server and is "
                                "not shared between connections; name a file, e.g. sqlite:///speakers.db")
        return url.set(drivername="sqlite")
    raise DatabaseError(f"--database {url.drivername}://: only SQLite (sqlite:///FILE, or a file path) and "
                        f"PostgreSQL (postgresql://...) are supported")


def shown_url(url: URL) -> str:
    """The URL for messages and logs: the password hidden."""
    return url.render_as_string(hide_password=True)


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, "<f4").tobytes()


def _vector(data: bytes, dim: int) -> np.ndarray:
    vector = np.frombuffer(bytes(data), "<f4")
    if vector.shape != (dim,):
        raise DatabaseError(f"stored embedding of {vector.size} values where {dim} were recorded: damaged row")
    return vector.astype(np.float32)


def weighted_mean(embeddings: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """The renormalised mean of unit utterance embeddings, each counted `weight`
    times; with all weights 1 exactly `scoring.speaker_embedding` (as Enrolment).

    >>> weighted_mean(np.array([[1., 0.], [0., 1.]]), [1, 3]).astype(float).round(4).tolist()
    [0.3162, 0.9487]
    """
    weights = np.asarray(weights, np.float64)
    if np.all(weights == 1):
        return speaker_embedding(embeddings)
    return speaker_embedding((np.asarray(embeddings, np.float64) * weights[:, None]) * (len(weights) / weights.sum()))


class Store:
    """The service's database. Thread-safe: each call takes a pooled connection."""

    def __init__(self, url: str | Path | URL):
        self.url = url if isinstance(url, URL) else database_url(url)
        self.backend = self.url.get_backend_name()
        try:
            self.engine = self._engine()
            metadata.create_all(self.engine)
            self._check_schema()
        except (SQLAlchemyError, OSError) as error:
            raise DatabaseError(f"{shown_url(self.url)}: cannot open the database ({_reason(error)})") from None

    # --- connection and transactions -----------------------------------------------------------

    def _engine(self) -> Engine:
        if self.backend != "sqlite":
            return create_engine(self.url, pool_pre_ping=True)
        Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(self.url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cursor = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=FULL", "secure_delete=ON",
                           "busy_timeout=30000"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):
            write = connection.get_execution_options().get("deep_speaker_write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; it raises the generation counter before it commits."""
        with self.engine.connect() as connection:
            connection.execution_options(deep_speaker_write=True)
            with connection.begin():
                yield connection
                connection.execute(update(generation).where(generation.c.id == 1)
                                   .values(value=generation.c.value + 1))

    def _check_schema(self) -> None:
        with self._write() as connection:
            found = connection.execute(select(store_info.c.value).where(store_info.c.name == "schema_version")
                                       ).scalar()
            if found is None:
                connection.execute(store_info.insert().values(name="schema_version", value=str(SCHEMA_VERSION)))
            elif int(found) > SCHEMA_VERSION:
                raise DatabaseError(f"{shown_url(self.url)}: schema version {found} is newer than this deep-speaker's "
                                    f"({SCHEMA_VERSION}); upgrade deep-speaker")
            if connection.execute(select(generation.c.value).where(generation.c.id == 1)).scalar() is None:
                connection.execute(generation.insert().values(id=1, value=0))

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise DatabaseError unless the database answers."""
        try:
            with self._read() as connection:
                connection.execute(select(generation.c.value)).scalar()
        except SQLAlchemyError as error:
            raise DatabaseError(f"database unreachable ({_reason(error)})") from None

    def generation(self) -> int:
        with self._read() as connection:
            return int(connection.execute(select(generation.c.value).where(generation.c.id == 1)).scalar_one())

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` ("ok" when sound); "ok" on PostgreSQL once it answers."""
        with self._read() as connection:
            if self.backend == "sqlite":
                return "; ".join(str(row[0]) for row in connection.exec_driver_sql("PRAGMA integrity_check"))
            connection.execute(select(1)).scalar()
            return "ok"

    # --- speakers ----------------------------------------------------------------------------------

    @staticmethod
    def _record(row, recordings_kept: int | None = None) -> SpeakerRecord:
        return SpeakerRecord(row.id, row.name, int(row.utterances), row.model_sha256, row.model_path,
                             json.loads(row.settings), row.created_at, row.changed_at, recordings_kept)

    def speaker(self, speaker_id: str) -> SpeakerRecord:
        """One speaker; SpeakerNotFound when it is not enrolled."""
        with self._read() as connection:
            row = connection.execute(select(speakers).where(speakers.c.id == speaker_id)).first()
            if row is None:
                raise SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled")
            kept = connection.execute(select(func.count()).select_from(utterances).where(
                utterances.c.speaker_id == speaker_id, utterances.c.audio.is_not(None))).scalar_one()
            return self._record(row, int(kept))

    def speaker_mean(self, speaker_id: str) -> tuple[SpeakerRecord, np.ndarray]:
        """A speaker and its renormalised mean embedding; SpeakerNotFound when absent."""
        with self._read() as connection:
            row = connection.execute(select(speakers).where(speakers.c.id == speaker_id)).first()
        if row is None:
            raise SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled")
        return self._record(row), _vector(row.mean, row.dim)

    def speakers(self, limit: int = 100, after: str | None = None) -> list[SpeakerRecord]:
        """Up to `limit` speakers in id order, those after `after` (a page's last id)."""
        query = select(speakers).order_by(speakers.c.id).limit(limit)
        if after is not None:
            query = query.where(speakers.c.id > after)
        with self._read() as connection:
            return [self._record(row) for row in connection.execute(query)]

    def count_speakers(self) -> int:
        with self._read() as connection:
            return int(connection.execute(select(func.count()).select_from(speakers)).scalar_one())

    def utterance_embeddings(self, speaker_id: str) -> tuple[np.ndarray, list[int]]:
        """A speaker's utterance embeddings (n, dim) and their weights; SpeakerNotFound when absent."""
        with self._read() as connection:
            dim = connection.execute(select(speakers.c.dim).where(speakers.c.id == speaker_id)).scalar()
            if dim is None:
                raise SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled")
            rows = connection.execute(select(utterances.c.embedding, utterances.c.weight)
                                      .where(utterances.c.speaker_id == speaker_id).order_by(utterances.c.id)).all()
        return np.stack([_vector(row.embedding, dim) for row in rows]), [int(row.weight) for row in rows]

    def incompatible_speakers(self, stamp: ModelStamp) -> tuple[int, str | None]:
        """How many speakers were enrolled with another model or settings than `stamp`, and one of them."""
        condition = (speakers.c.model_sha256 != stamp.sha256) | (speakers.c.settings != stamp.settings_json)
        with self._read() as connection:
            count = int(connection.execute(select(func.count()).select_from(speakers).where(condition)).scalar_one())
            example = connection.execute(select(speakers.c.id).where(condition).limit(1)).scalar()
        return count, example

    def check_compatible(self, stamp: ModelStamp) -> None:
        """ModelMismatch (one line) when any speaker was enrolled with another model or settings."""
        count, example = self.incompatible_speakers(stamp)
        if count:
            record, _ = self.speaker_mean(example)
            try:
                record.check_compatible(stamp)
            except ModelMismatch as error:
                raise ModelMismatch(f"{count} enrolled speaker(s) do not fit this model; the first: {error}") from None
            raise ModelMismatch(f"{count} enrolled speaker(s) were stored with other feature settings than this "
                                f"model's (e.g. {example!r}); enrol them again")

    def means(self, stamp: ModelStamp) -> MeansSnapshot:
        """Every speaker's mean as one (n, dim) float32 matrix, in id order, with the
        generation it reflects (read first, so the rows are at least that recent)."""
        with self._read() as connection:
            current = int(connection.execute(select(generation.c.value).where(generation.c.id == 1)).scalar_one())
            rows = connection.execute(select(speakers.c.id, speakers.c.mean, speakers.c.dim, speakers.c.model_sha256,
                                             speakers.c.settings).order_by(speakers.c.id)).all()
        if not rows:
            return MeansSnapshot(current)
        if any(row.model_sha256 != stamp.sha256 or row.settings != stamp.settings_json for row in rows):
            self.check_compatible(stamp)  # raises ModelMismatch naming one
        dims = {row.dim for row in rows}
        if len(dims) != 1:
            raise DatabaseError(f"enrolled means of several sizes {sorted(dims)}: damaged rows")
        matrix = np.frombuffer(b"".join(bytes(row.mean) for row in rows), "<f4").reshape(len(rows), dims.pop())
        return MeansSnapshot(current, [row.id for row in rows], matrix.astype(np.float32))

    def enrol(self, speaker_id: str, embeddings: np.ndarray, stamp: ModelStamp, *, name: str | None = None,
              audio: Sequence[tuple[bytes, str]] | None = None) -> tuple[SpeakerRecord, bool]:
        """Add utterance embeddings (n, dim) to a speaker, creating it when needed, in one
        transaction; returns (the speaker, whether it was created). `audio`: one
        (bytes, file name) per embedding, stored only when given (--keep_audio).
        ModelMismatch when the speaker was enrolled with another model or settings."""
        check_speaker_id(speaker_id)
        if name is not None:
            check_name(name)
        embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
        if len(embeddings) == 0:
            raise StoreError("no embeddings to enrol")
        if audio is not None and len(audio) != len(embeddings):
            raise ValueError("one recording per embedding expected")
        now = utc_now()
        with self._write() as connection:
            row = connection.execute(select(speakers).where(speakers.c.id == speaker_id).with_for_update()).first()
            created = row is None
            if created:
                inserted = connection.execute(
                    _insert_ignoring_conflict(self.backend, speakers).values(
                        id=speaker_id, name=name or speaker_id, model_sha256=stamp.sha256, model_path=stamp.path,
                        settings=stamp.settings_json, dim=embeddings.shape[1],
                        mean=_vector_bytes(weighted_mean(embeddings, [1] * len(embeddings))),
                        utterances=len(embeddings), created_at=now, changed_at=now).returning(speakers.c.id))
                created = inserted.first() is not None
                if not created:  # PostgreSQL: another transaction made it meanwhile; lock and add to it
                    row = connection.execute(select(speakers).where(speakers.c.id == speaker_id).with_for_update()
                                             ).first()
            if not created:
                self._record(row).check_compatible(stamp)
                if row.dim != embeddings.shape[1]:
                    raise ModelMismatch(f"speaker {speaker_id!r} holds {row.dim}-d embeddings, not "
                                        f"{embeddings.shape[1]}-d")
                old = connection.execute(select(utterances.c.embedding, utterances.c.weight)
                                         .where(utterances.c.speaker_id == speaker_id).order_by(utterances.c.id)).all()
                stacked = np.concatenate([np.stack([_vector(r.embedding, row.dim) for r in old]), embeddings]) \
                    if old else embeddings
                weights = [int(r.weight) for r in old] + [1] * len(embeddings)
                changes = {"mean": _vector_bytes(weighted_mean(stacked, weights)), "utterances": int(sum(weights)),
                           "changed_at": now}
                if name is not None:
                    changes["name"] = name
                connection.execute(update(speakers).where(speakers.c.id == speaker_id).values(**changes))
            connection.execute(utterances.insert(), [
                {"speaker_id": speaker_id, "embedding": _vector_bytes(vector), "weight": 1, "source": "upload",
                 "audio": audio[i][0] if audio is not None else None,
                 "audio_name": audio[i][1][:MAX_NAME] if audio is not None else None, "created_at": now}
                for i, vector in enumerate(embeddings)])
            record = self._record(connection.execute(select(speakers).where(speakers.c.id == speaker_id)).one())
        return record, created

    def delete_speaker(self, speaker_id: str) -> int:
        """Erase a speaker and every row of it (utterances, embeddings, any kept audio) in
        one transaction; returns how many utterance rows went. SpeakerNotFound when absent."""
        with self._write() as connection:
            erased = connection.execute(delete(utterances).where(utterances.c.speaker_id == speaker_id)).rowcount
            if connection.execute(delete(speakers).where(speakers.c.id == speaker_id)).rowcount != 1:
                raise SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled")  # rolls back: nothing was there
        return int(erased)

    # --- enrolment files (identify.py --enroll) ---------------------------------------------------

    def import_enrolment(self, enrolment: Enrolment, stamp: ModelStamp, *, replace: bool = False,
                         source: str = "the enrolment") -> int:
        """Add every speaker of an enrolment file, in one transaction. It must have been made
        with the model of `stamp` (refused as identify.py refuses it); a speaker already
        enrolled is refused unless `replace`, which erases it first. Each becomes one
        utterance row: the file's mean, weighted by the utterances it counted."""
        try:
            enrolment.check_compatible(stamp.identity, stamp.settings, source)
        except EnrolmentError as error:
            raise ModelMismatch(str(error)) from None
        for speaker_id in enrolment.speakers:
            check_speaker_id(speaker_id)
        if len(set(enrolment.speakers)) != len(enrolment.speakers):
            raise StoreError(f"{source}: a speaker id appears twice")
        now = utc_now()
        means = np.asarray(enrolment.embeddings, np.float32)
        with self._write() as connection:
            present = []
            for start in range(0, len(enrolment.speakers), 500):
                chunk = enrolment.speakers[start:start + 500]
                present += connection.execute(select(speakers.c.id).where(speakers.c.id.in_(chunk))).scalars().all()
            if present and not replace:
                shown = ", ".join(repr(p) for p in sorted(present)[:5]) + (" ..." if len(present) > 5 else "")
                raise SpeakerExists(f"{source}: {len(present)} speaker(s) already enrolled ({shown}); pass --replace "
                                    f"to replace them")
            for speaker_id in present:
                connection.execute(delete(utterances).where(utterances.c.speaker_id == speaker_id))
                connection.execute(delete(speakers).where(speakers.c.id == speaker_id))
            speaker_rows, utterance_rows = [], []
            for speaker_id, vector, count in zip(enrolment.speakers, means, enrolment.utterances):
                mean = speaker_embedding(vector[None])  # a unit row already; renormalised in float64 as everywhere
                speaker_rows.append({"id": speaker_id, "name": speaker_id, "model_sha256": stamp.sha256,
                                     "model_path": stamp.path, "settings": stamp.settings_json, "dim": len(mean),
                                     "mean": _vector_bytes(mean), "utterances": max(1, int(count)), "created_at": now,
                                     "changed_at": now})
                utterance_rows.append({"speaker_id": speaker_id, "embedding": _vector_bytes(mean),
                                       "weight": max(1, int(count)), "source": "import", "audio": None,
                                       "audio_name": None, "created_at": now})
            connection.execute(speakers.insert(), speaker_rows)
            connection.execute(utterances.insert(), utterance_rows)
        return len(speaker_rows)

    def export_enrolment(self, speaker_ids: Sequence[str] | None = None) -> Enrolment:
        """The enrolled speakers (all, or `speaker_ids`) as an Enrolment that
        identify.py --enrolment reads (save it with `.save(path)`)."""
        query = select(speakers).order_by(speakers.c.id)
        with self._read() as connection:
            rows = connection.execute(query).all() if speaker_ids is None else [
                row for row in connection.execute(query.where(speakers.c.id.in_(list(speaker_ids)))).all()]
        if speaker_ids is not None:
            missing = sorted(set(speaker_ids) - {row.id for row in rows})
            if missing:
                raise SpeakerNotFound(f"speaker {missing[0]!r} is not enrolled")
        if not rows:
            raise StoreError("no speaker is enrolled: nothing to export")
        models = {(row.model_sha256, row.settings) for row in rows}
        if len(models) != 1:
            raise ModelMismatch(f"the speakers were enrolled with {len(models)} different models or settings; export "
                                f"them one model at a time (--speaker)")
        first = rows[0]
        return Enrolment([row.id for row in rows], np.stack([_vector(row.mean, row.dim) for row in rows]),
                         [int(row.utterances) for row in rows], {"sha256": first.model_sha256, "path": first.model_path},
                         json.loads(first.settings))

    # --- API keys ----------------------------------------------------------------------------------

    def add_key(self, record: KeyRecord) -> None:
        with self._write() as connection:
            connection.execute(api_keys.insert().values(
                id=record.id, name=record.name, scopes=" ".join(record.scopes), kdf=record.kdf, salt=record.salt,
                hash=record.hash, created_at=record.created, revoked_at=record.revoked))

    @staticmethod
    def _key(row) -> KeyRecord:
        return KeyRecord(row.id, row.name, tuple(row.scopes.split()), row.kdf, row.salt, row.hash, row.created_at,
                         row.revoked_at)

    def key(self, key_id: str) -> KeyRecord | None:
        with self._read() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else self._key(row)

    def keys(self) -> list[KeyRecord]:
        with self._read() as connection:
            return [self._key(row) for row in connection.execute(select(api_keys).order_by(api_keys.c.created_at,
                                                                                          api_keys.c.id))]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no such key exists (revoking twice keeps the first time)."""
        with self._write() as connection:
            row = connection.execute(select(api_keys.c.revoked_at).where(api_keys.c.id == key_id)).first()
            if row is None:
                return False
            if row.revoked_at is None:
                connection.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=utc_now()))
        return True


def _insert_ignoring_conflict(backend: str, table: Table):
    """INSERT ... ON CONFLICT (primary key) DO NOTHING, in the dialect of `backend`."""
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=[table.primary_key.columns.values()[0].name])


def _reason(error: Exception) -> str:
    """The first line of a database error, without SQLAlchemy's background link."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__
