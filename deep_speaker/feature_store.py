"""The on-disk feature store that training reads: ``<cache>/store/``.

Packed from the training inputs (``inputs/<speaker>.pkl``, stage 2) by
`pack_store`, which ``preprocess.py --generate_training_inputs`` runs after
stage 2 and ``train_cli.py`` runs when the store is missing or stale. Layout:

- ``shard-NNNNN.npy``: (frames, num_fbanks) float16 frames of consecutive
  utterances, plain ``.npy`` files (``np.load(..., mmap_mode="r")`` reads them).
  A shard holds at most ``max_shard_bytes`` of frames (an utterance longer than
  that gets a shard of its own).
- ``index.npz``: one row per utterance, sorted by (speaker, part, position):
  ``speaker`` (int32, into the manifest's speaker list), ``part`` (int8, 0 train,
  1 test), ``position`` (int32, the utterance's place in its inputs list),
  ``shard`` (int32), ``offset`` and ``length`` (int64 frames within the shard).
- ``manifest.json``: format version, dtype, num_fbanks, the feature settings,
  the speakers (every inputs pickle's speaker id, sorted), the shards and the
  signature of the inputs it was packed from. Written last: a store without it
  is incomplete.

Why float16: the frames are per-utterance CMVN-normalised log fbanks, values
of a few units with no meaningful digits past the 4th; float16 keeps 11 bits of
mantissa (relative error below 5e-4) and halves disk, page cache and read
bandwidth. `tests/test_feature_store.py` checks that the model's embeddings of
float16 and float32 features agree closely.

Packing is resumable: every finished shard is renamed into place and then
recorded, with the index rows written so far and the cursor (speaker, part,
utterance) of the next utterance, in ``.pack-journal.npz``; a killed pack
resumes from the last recorded shard. A journal made from other inputs or other
settings is discarded and packing starts over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deep_speaker.errors import InputError
from deep_speaker.io_utils import atomic_write, atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)

STORE_DIR = "store"
MANIFEST = "manifest.json"
INDEX = "index.npz"
JOURNAL = ".pack-journal.npz"
FORMAT_VERSION = 1
STORE_DTYPE = np.float16
DEFAULT_SHARD_MB = 256.0
PARTS = ("train", "test")
INDEX_FIELDS = ("speaker", "part", "position", "shard", "offset", "length")
_INDEX_DTYPES = {"speaker": np.int32, "part": np.int8, "position": np.int32, "shard": np.int32,
                 "offset": np.int64, "length": np.int64}


class StoreError(InputError):
    """A feature store that cannot be used (incomplete, damaged, other settings)."""


def store_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / STORE_DIR


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


def inputs_signature(cache_dir: str | Path) -> str | None:
    """A digest of the training inputs the store is packed from (each pickle's
    name, size and modification time, and the stage-2 signature beside it); None
    when there are no inputs. A pickle replaced behind stage 2's back (its .sig
    unchanged) makes the store stale, so training repacks it, and reading it
    through the restricted unpickler refuses a planted one."""
    from deep_speaker.training_inputs import INPUTS_DIR, SIGNATURE_SUFFIX

    files = sorted((Path(cache_dir) / INPUTS_DIR).glob("*.pkl"))
    if not files:
        return None
    digest = hashlib.sha1(f"store v{FORMAT_VERSION};".encode())
    for path in files:
        try:
            signature = path.with_name(path.name + SIGNATURE_SUFFIX).read_text().strip()
        except (OSError, ValueError):
            signature = ""
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{signature};".encode())
    return digest.hexdigest()


# --- packing ---------------------------------------------------------------------------------

@dataclass
class PackSummary:
    packed: bool  # False: the store was already up to date
    speakers: int
    utterances: int
    frames: int
    shards: int
    frame_shift_ms: float  # of the features it holds: one frame per shift of audio
    resumed_from_shard: int = 0

    @property
    def hours(self) -> float:
        """Hours of (trimmed) audio the frames cover.

        >>> PackSummary(True, 1, 1, 360_000, 1, 10.0).hours, PackSummary(True, 1, 1, 360_000, 1, 20.0).hours
        (1.0, 2.0)
        """
        return self.frames * self.frame_shift_ms / 3_600_000

    def line(self) -> str:
        if not self.packed:
            return f"feature store: up to date ({self.speakers} speakers, {self.hours:.2f} h, {self.shards} shards)"
        resumed = f", resumed after shard {self.resumed_from_shard}" if self.resumed_from_shard else ""
        return (f"feature store: packed {self.speakers} speakers, {self.utterances} utterances, "
                f"{self.hours:.2f} h into {self.shards} float16 shards{resumed}")


def store_is_current(cache_dir: str | Path, signature: str | None = None) -> bool:
    """The store is complete and packed from the inputs the cache holds now."""
    folder = store_dir(cache_dir)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    signature = signature if signature is not None else inputs_signature(cache_dir)
    return (isinstance(manifest, dict) and manifest.get("version") == FORMAT_VERSION
            and manifest.get("source_signature") == signature and (folder / INDEX).exists()
            and all((folder / s["name"]).exists() for s in manifest.get("shards", [])))


def pack_store(cache_dir: str | Path, config, *, max_shard_mb: float = DEFAULT_SHARD_MB,
               lock_timeout: float | None = None, progress: bool = True) -> PackSummary:
    """Pack ``inputs/*.pkl`` into ``<cache>/store/`` unless it is up to date.

    Holds the cache's exclusive lock (`deep_speaker.locking`), so two trainers
    starting on one cache pack it once. Memory: one speaker's inputs plus one
    shard buffer. Raises FileNotFoundError when there are no inputs.
    """
    from deep_speaker.locking import cache_lock

    cache_dir = Path(cache_dir)
    signature = inputs_signature(cache_dir)
    if signature is None:
        raise FileNotFoundError(f"{cache_dir / 'inputs'}: no training inputs (run preprocess.py "
                                f"--generate_training_inputs)")
    if store_is_current(cache_dir, signature):
        return _summary_of(cache_dir, packed=False)
    with cache_lock(cache_dir, timeout=lock_timeout, purpose="feature store"):
        signature = inputs_signature(cache_dir)  # another run may have changed or packed it meanwhile
        if store_is_current(cache_dir, signature):
            return _summary_of(cache_dir, packed=False)
        return _pack_locked(cache_dir, config, signature, int(max_shard_mb * (1 << 20)), progress)


def _summary_of(cache_dir: Path, packed: bool) -> PackSummary:
    manifest = json.loads((store_dir(cache_dir) / MANIFEST).read_text())
    return PackSummary(packed, len(manifest["speakers"]), manifest["utterances"], manifest["frames"],
                       len(manifest["shards"]), manifest["feature_settings"]["frame_shift_ms"])


class _ShardWriter:
    """Fills a preallocated float16 buffer; each full buffer becomes a shard."""

    def __init__(self, folder: Path, num_fbanks: int, max_bytes: int, first_shard: int):
        self.folder, self.num_fbanks = folder, num_fbanks
        self.capacity = max(1, max_bytes // (num_fbanks * np.dtype(STORE_DTYPE).itemsize))
        self.buffer = np.empty((0, num_fbanks), STORE_DTYPE)
        self.fill = 0
        self.shard = first_shard

    def room_for(self, frames: int) -> bool:
        return self.fill == 0 or self.fill + frames <= self.capacity

    def add(self, frames: np.ndarray) -> tuple[int, int]:
        """(shard, offset) where `frames` will lie."""
        needed = self.fill + len(frames)
        if needed > len(self.buffer):  # grows up to the capacity (or one long utterance)
            grown = np.empty((max(needed, min(self.capacity, max(2 * len(self.buffer), 1 << 16))),
                              self.num_fbanks), STORE_DTYPE)
            grown[:self.fill] = self.buffer[:self.fill]
            self.buffer = grown
        self.buffer[self.fill:needed] = frames
        offset, self.fill = self.fill, needed
        return self.shard, offset

    def flush(self) -> dict | None:
        """Write the buffered frames as the current shard; returns its manifest entry."""
        if self.fill == 0:
            return None
        data = self.buffer[:self.fill]
        name = shard_name(self.shard)
        atomic_write(self.folder / name, lambda handle: np.save(handle, data, allow_pickle=False))
        entry = {"name": name, "frames": int(self.fill)}
        self.shard += 1
        self.fill = 0
        if len(self.buffer) > self.capacity:
            self.buffer = np.empty((0, self.num_fbanks), STORE_DTYPE)
        return entry


def _pack_locked(cache_dir: Path, config, signature: str, max_bytes: int, progress: bool) -> PackSummary:
    from deep_speaker.progress import progress_bar
    from deep_speaker.training_inputs import INPUTS_DIR, load_inputs_file

    folder = store_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(folder)
    (folder / MANIFEST).unlink(missing_ok=True)  # from here on the store is incomplete
    files = sorted((cache_dir / INPUTS_DIR).glob("*.pkl"))
    speakers = [path.stem for path in files]
    metadata: list[dict] = []  # per speaker: the scalar fields of its inputs (speed, copy, source speaker, ...)
    settings = config.feature_settings()
    meta = {"version": FORMAT_VERSION, "source_signature": signature, "feature_settings": settings,
            "speakers": speakers, "max_shard_bytes": max_bytes}
    journal = _read_journal(folder / JOURNAL, meta)
    if journal is None:
        rows = {name: [] for name in INDEX_FIELDS}
        shards, cursor = [], (0, 0, 0)
        for stale in folder.glob("shard-*.npy"):
            stale.unlink()
        (folder / INDEX).unlink(missing_ok=True)
    else:
        rows = {name: list(journal["rows"][name]) for name in INDEX_FIELDS}
        shards, cursor = journal["shards"], journal["cursor"]
        metadata[:] = journal["metadata"][:cursor[0]]  # the cursor's speaker is read again
        for stale in folder.glob("shard-*.npy"):  # shards written after the last journal entry
            if stale.name not in {s["name"] for s in shards}:
                stale.unlink()
        log.info("feature store: resuming after %d packed shards", len(shards))
    resumed_from = len(shards)
    writer = _ShardWriter(folder, config.num_fbanks, max_bytes, len(shards))
    pending = {name: [] for name in INDEX_FIELDS}  # rows of the shard being filled

    def commit(next_cursor) -> None:
        entry = writer.flush()
        if entry is None:
            return
        shards.append(entry)
        for name in INDEX_FIELDS:
            rows[name].extend(pending[name])
            pending[name].clear()
        _write_journal(folder / JOURNAL, meta, rows, shards, next_cursor, metadata)

    first_speaker = cursor[0]
    with progress_bar(total=len(files), desc="feature store", unit="speaker", enabled=progress) as bar:
        bar.update(first_speaker)
        for number in range(first_speaker, len(files)):
            inputs = load_inputs_file(files[number])
            if inputs["speaker_id"] != speakers[number]:
                raise StoreError(f"{files[number]}: holds speaker {inputs['speaker_id']!r}, not {speakers[number]!r}")
            metadata.append(_scalar_fields(inputs))
            for part_number, part in enumerate(PARTS):
                if (number, part_number) < cursor[:2]:
                    continue
                first = cursor[2] if (number, part_number) == tuple(cursor[:2]) else 0
                for position in range(first, len(inputs[part])):
                    frames = np.asarray(inputs[part][position])
                    if frames.shape[1:] != (config.num_fbanks,):
                        raise StoreError(f"{files[number]}: {part} utterance {position} has "
                                         f"{frames.shape[1:]} bands, the settings say {config.num_fbanks}")
                    if not len(frames):
                        continue
                    if not writer.room_for(len(frames)):
                        commit((number, part_number, position))
                    shard, offset = writer.add(frames.astype(STORE_DTYPE))
                    for name, value in zip(INDEX_FIELDS, (number, part_number, position, shard, offset, len(frames))):
                        pending[name].append(value)
            del inputs
            bar.update(1)
    commit((len(files), 0, 0))
    index = {name: np.asarray(rows[name], dtype=_INDEX_DTYPES[name]) for name in INDEX_FIELDS}
    atomic_write(folder / INDEX, lambda handle: np.savez(handle, **index))
    manifest = {**meta, "speaker_metadata": metadata, "dtype": np.dtype(STORE_DTYPE).name,
                "num_fbanks": config.num_fbanks, "shards": shards,
                "utterances": int(len(index["length"])), "frames": int(index["length"].sum())}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    (folder / JOURNAL).unlink(missing_ok=True)
    return PackSummary(True, len(speakers), manifest["utterances"], manifest["frames"], len(shards),
                       config.frame_shift_ms, resumed_from)


def _scalar_fields(inputs: dict) -> dict:
    """What an inputs dict records besides frames and id lists: scalars (speed,
    augmented_copy, source speaker, ...) and small settings dicts (feature and
    data settings), as JSON."""
    kept = {}
    for key, value in inputs.items():
        if key in ("train", "test") or not isinstance(value, (str, int, float, bool, dict)):
            continue
        try:
            kept[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):  # a dict holding arrays: not metadata
            continue
    return kept


def _write_journal(path: Path, meta: dict, rows: dict, shards: list, cursor, metadata: list) -> None:
    arrays = {f"rows_{name}": np.asarray(rows[name], dtype=_INDEX_DTYPES[name]) for name in INDEX_FIELDS}
    state = json.dumps({**meta, "shards": shards, "cursor": [int(c) for c in cursor], "metadata": metadata})
    atomic_write(path, lambda handle: np.savez(handle, state=np.frombuffer(state.encode(), np.uint8), **arrays))


def _read_journal(path: Path, meta: dict) -> dict | None:
    """The journal of a killed pack of the same inputs and settings, else None."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            state = json.loads(saved["state"].tobytes().decode())
            rows = {name: saved[f"rows_{name}"] for name in INDEX_FIELDS}
    except (OSError, ValueError, KeyError):
        return None
    if any(state.get(key) != value for key, value in meta.items()):
        log.info("feature store: the journal of an earlier pack is for other inputs; packing anew")
        return None
    if not all((path.parent / s["name"]).exists() for s in state["shards"]):
        return None
    return {"rows": rows, "shards": state["shards"], "cursor": tuple(state["cursor"]), "metadata": state["metadata"]}


# --- reading ---------------------------------------------------------------------------------

class FeatureStore:
    """A complete store, opened for reading: its manifest and index (a few
    bytes per utterance); the frames stay on disk."""

    def __init__(self, cache_dir: str | Path):
        self.folder = store_dir(cache_dir)
        try:
            self.manifest = json.loads((self.folder / MANIFEST).read_text())
            with np.load(self.folder / INDEX, allow_pickle=False) as saved:
                self.index = {name: saved[name].astype(_INDEX_DTYPES[name]) for name in INDEX_FIELDS}
        except FileNotFoundError:
            raise StoreError(f"{self.folder}: no complete feature store (preprocess.py --generate_training_inputs "
                             f"packs it)") from None
        except (OSError, ValueError, KeyError) as error:
            raise StoreError(f"{self.folder}: unreadable feature store ({type(error).__name__}: {error}); "
                             f"delete it and rerun preprocess.py --generate_training_inputs") from None
        if self.manifest.get("version") != FORMAT_VERSION:
            raise StoreError(f"{self.folder}: feature store format {self.manifest.get('version')!r}, "
                             f"this deep-speaker reads {FORMAT_VERSION}; delete it to repack")
        self.speakers: list[str] = list(self.manifest["speakers"])
        self.num_fbanks = int(self.manifest["num_fbanks"])
        self.shards = [self.folder / s["name"] for s in self.manifest["shards"]]

    def check_settings(self, config) -> None:
        """Refuse a store made with other feature settings than `config`'s (in
        training, those the training inputs record, which it adopts)."""
        if self.manifest.get("feature_settings") != config.feature_settings():
            raise StoreError(f"{self.folder}: features packed with {self.manifest.get('feature_settings')}, "
                             f"the training inputs record {config.feature_settings()}; regenerate the training "
                             f"inputs")

    def stand_ins(self) -> dict[str, dict]:
        """{speaker: its inputs dict without frames} (empty train/test lists):
        what the inputs recorded, for the checks and merges made on inputs."""
        metadata = self.manifest.get("speaker_metadata") or [{} for _ in self.speakers]
        return {speaker: {**meta, "speaker_id": speaker, "train": [], "test": []}
                for speaker, meta in zip(self.speakers, metadata)}

    def classes(self, perturbed_speakers: str = "classes") -> tuple[list[str], dict[str, list[list[int]]]]:
        """Training classes, and for each part the store speakers whose
        utterances each class takes, in order.

        Decided by the training path's own merges (`merge_augmented_copies`,
        then `merge_perturbed_speakers` when perturbed_speakers is "augment"),
        run on stand-ins that carry each speaker's recorded metadata (speed,
        augmented copy, source speaker) and one marker per part instead of
        frames: the store trains on exactly the classes and utterance order the
        in-RAM path builds from the same inputs."""
        from deep_speaker.training_inputs import merge_augmented_copies, merge_perturbed_speakers

        stand_ins = {speaker: {**data, "train": [number], "test": [number]}
                     for number, (speaker, data) in enumerate(self.stand_ins().items())}
        merged = merge_augmented_copies(stand_ins)
        if perturbed_speakers == "augment":
            merged = merge_perturbed_speakers(merged)
        classes = sorted(merged)
        return classes, {part: [[int(n) for n in merged[c][part]] for c in classes] for part in PARTS}

    def bank(self, part: str, perturbed_speakers: str = "classes", share: tuple[int, int] = (0, 1)) -> "StoreBank":
        """The `part` utterances as a bank with training labels. A share (I, N)
        keeps the utterances in shards I, I + N, ... of the shards that hold
        this part (a multi-worker input pipeline's share; the whole part when
        fewer than N shards hold it). Utterances are ordered as
        `inputs.make_bank` orders the merged inputs."""
        classes, members = self.classes(perturbed_speakers)
        index = self.index
        rank_of = np.full(len(self.speakers), -1, np.int64)  # where each store speaker's utterances go
        label_of = np.full(len(self.speakers), -1, np.int32)
        rank = 0
        for label, speakers in enumerate(members[part]):
            for speaker in speakers:
                rank_of[speaker], label_of[speaker] = rank, label
                rank += 1
        keep = (index["part"] == PARTS.index(part)) & (rank_of[index["speaker"]] >= 0)
        worker, workers = share
        holding = np.unique(index["shard"][keep])
        if workers > 1 and len(holding) >= workers:
            keep &= np.isin(index["shard"], holding[worker::workers])
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(rank_of[index["speaker"][rows]], kind="stable")]  # then by position, as indexed
        labels = label_of[index["speaker"]]
        if not len(rows):
            raise StoreError(f"{self.folder}: no {part} utterances in the training inputs")
        return StoreBank(self, index["shard"][rows], index["offset"][rows], index["length"][rows],
                         labels[rows].astype(np.int32), classes)


class BankIndex:
    """What a bank of utterances derives from its sorted `labels` (int, one per
    utterance), `lengths` and `speakers`: speaker k owns utterances
    first_utterance[k] .. first_utterance[k] + utterance_count[k] - 1. Shared by the
    in-RAM `inputs.UtteranceBank` and the on-disk `StoreBank`."""

    @property
    def first_utterance(self) -> np.ndarray:
        return np.searchsorted(self.labels, np.arange(len(self.speakers))).astype(np.int64)

    @property
    def utterance_count(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.speakers)).astype(np.int64)

    @property
    def num_utterances(self) -> int:
        return len(self.lengths)


class StoreBank(BankIndex):
    """Utterances of a FeatureStore with their labels, read from disk on demand.

    Same attributes as `inputs.UtteranceBank` except `frames`: shard, offsets
    (within the shard) and lengths are (num_utterances,) int; labels (int32) are
    sorted. Frames are read with pread(2) into a small buffer per batch, not
    memory-mapped, so the resident memory is the index and one batch whatever
    the corpus size (the page cache is the kernel's). File descriptors are
    opened for the shards this bank uses only.
    """

    def __init__(self, store: FeatureStore, shard, offsets, lengths, labels, speakers):
        self.store, self.shard, self.offsets, self.lengths = store, shard, offsets, lengths
        self.labels, self.speakers = labels, list(speakers)
        self.num_fbanks = store.num_fbanks
        self.row_bytes = self.num_fbanks * np.dtype(STORE_DTYPE).itemsize
        self._files: dict[int, tuple[int, int]] = {}  # shard -> (fd, byte offset of its data)
        self._opening = threading.Lock()  # tf.data calls the reader from several threads
        self._samplers: dict = {}


    @property
    def shards_used(self) -> list[int]:
        return sorted(set(np.unique(self.shard).tolist()))

    def _file(self, shard: int) -> tuple[int, int]:
        opened = self._files.get(shard)
        if opened is not None:
            return opened
        with self._opening:
            return self._files.get(shard) or self._open(shard)

    def _open(self, shard: int) -> tuple[int, int]:
        path = self.store.shards[shard]
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
            dtype, shape, data_offset, contiguous = mapped.dtype, mapped.shape, mapped.offset, mapped.flags.c_contiguous
            del mapped
            if dtype != np.dtype(STORE_DTYPE) or not contiguous or len(shape) != 2 or shape[1] != self.num_fbanks:
                raise ValueError(f"holds {dtype} {shape}")
            opened = (os.open(path, os.O_RDONLY), data_offset)
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: unreadable store shard ({error})") from None
        self._files[shard] = opened
        return opened

    def crops(self, utterances: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, k, num_fbanks) float16: row rows[i, j] of utterance utterances[i]
        (rows within the utterance, each row set spanning at most k rows)."""
        utterances, rows = np.asarray(utterances, np.int64), np.asarray(rows, np.int64)
        low = rows.min(axis=1)
        span = rows.max(axis=1) - low + 1
        buffer = self._read_spans(utterances, low, span, rows.shape[1])
        if np.all(span == rows.shape[1]) and np.all(rows == low[:, None] + np.arange(rows.shape[1])):
            return buffer
        return np.take_along_axis(buffer, (rows - low[:, None])[:, :, None], axis=1)

    def windows(self, utterances: np.ndarray, starts: np.ndarray, num_frames: int) -> np.ndarray:
        """(n, num_frames, num_fbanks) float16: `num_frames` rows of each
        utterance from its start, wrapping around (tiling) when it is shorter."""
        utterances, starts = np.asarray(utterances, np.int64), np.asarray(starts, np.int64)
        lengths = self.lengths[utterances]
        short = lengths < num_frames
        # A window of a long enough utterance is one contiguous read; a short
        # utterance is read whole and tiled.
        buffer = self._read_spans(utterances, np.where(short, 0, starts), np.minimum(lengths, num_frames), num_frames)
        for i in np.flatnonzero(short):
            rows = (starts[i] + np.arange(num_frames)) % lengths[i]
            buffer[i] = buffer[i, rows]
        return buffer

    def _read_spans(self, utterances: np.ndarray, low: np.ndarray, span: np.ndarray, width: int) -> np.ndarray:
        """(n, width, num_fbanks) float16 whose first span[i] rows are rows
        low[i] .. low[i] + span[i] - 1 of utterance utterances[i]: one pread each."""
        buffer = np.empty((len(utterances), width, self.num_fbanks), STORE_DTYPE)
        shards = self.shard[utterances]
        files = {int(shard): self._file(int(shard)) for shard in np.unique(shards)}
        fds = [files[shard][0] for shard in shards.tolist()]
        data_offsets = np.array([files[shard][1] for shard in shards.tolist()], np.int64)
        positions = (data_offsets + (self.offsets[utterances] + low) * self.row_bytes).tolist()
        sizes = (np.asarray(span, np.int64) * self.row_bytes).tolist()
        view = memoryview(buffer).cast("B")
        stride = width * self.row_bytes
        preadv = os.preadv
        for i, (fd, position, size) in enumerate(zip(fds, positions, sizes)):
            if preadv(fd, [view[i * stride:i * stride + size]], position) != size:
                raise StoreError(f"{self.store.shards[int(shards[i])]}: shard shorter than its index says")
        return buffer

    def close(self) -> None:
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter teardown
            pass


def remove_store(cache_dir: str | Path) -> None:
    shutil.rmtree(store_dir(cache_dir), ignore_errors=True)
