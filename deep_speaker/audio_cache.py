"""Stage 1: the audio cache (`preprocess.py --regenerate_full_cache | --update_cache`).

One pickle per utterance in ``<cache>/audio_cache_pkl/<utterance_id>.pkl`` with the
seed's keys (`filename`, `left_blank_duration_ms`, `right_blank_duration_ms`,
`audio_voice_only`, `audio`) plus `speaker_id`, `utterance_id`, `sample_rate`.
Each run also appends to an index in ``<cache>/audio_cache_index/`` so stage 2
can group utterances by speaker without opening every pickle, and records the
settings the cache is made with (rate, trim rule and its parameters) in
``<cache>/audio_cache_pkl/settings.json``: an update with other settings is
refused, stage 2 and training copy them, and scoring refuses a model made with
other ones (`check_audio_settings`).

The 2018 code's cache is read as it is: ``<file stem>_cache.pkl`` records holding
only ``audio`` and ``audio_voice_only`` ((n, 1) float32), the blank durations and
``filename``; speaker and utterance come from `corpus.seed_cache_ids`, the rate and
trim are that code's (`SEED_AUDIO_SETTINGS`), and arrays are read as 1-D.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deep_speaker.audio import AudioError, load_utterance
from deep_speaker.config import AUDIO_FIELDS, CONFIG_VERSION, Config
from deep_speaker.corpus import (SEED_CACHE_SUFFIX, Utterance, discover_utterances, id_in_shard, in_shard,
                                 seed_cache_ids)
from deep_speaker.errors import InputError, SettingsMismatchError
from deep_speaker.io_utils import atomic_write_pickle, atomic_write_text, load_pickle, remove_stale_temp_files
from deep_speaker.locking import cache_lock
from deep_speaker.parallel import map_jobs
from deep_speaker.progress import progress_bar

log = logging.getLogger(__name__)

AUDIO_CACHE_DIR = "audio_cache_pkl"
INDEX_DIR = "audio_cache_index"
REGENERATING_MARKER = ".regenerating"
INDEX_COLUMNS = ("cache_file", "speaker_id", "utterance_id", "duration_s", "voice_s", "source")
SETTINGS_FILE = "settings.json"  # in audio_cache_pkl/, so a regenerate wipes it with the pickles
# What the 2018 code cached with (its constants: 8 kHz, voice = first to last sample above the
# 95th percentile of |x|, no minimum length); its records do not say.
SEED_AUDIO_SETTINGS = {"sample_rate_hz": 8000, "trim": "percentile", "trim_percentile": 95.0,
                       "trim_top_db": Config.trim_top_db, "min_voice_ms": 0.0}


@dataclass
class CacheSummary:
    cached: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    def line(self) -> str:
        rate = self.cached / self.wall_seconds if self.wall_seconds > 0 else 0.0
        return (f"audio cache: {self.cached} files cached, {self.skipped} skipped (already cached), "
                f"{len(self.failed)} failed, {self.audio_seconds / 3600:.2f} h of audio, "
                f"{self.wall_seconds:.1f} s wall, {rate:.1f} files/s")


class CacheWriteError(OSError):
    """Writing the cache failed (disk full, read-only folder, ...): the run stops,
    since every later file would fail the same way; what was written stays."""


def audio_cache_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / AUDIO_CACHE_DIR


def cache_utterance(utterance: Utterance, output_dir: Path, config: Config) -> dict:
    """Decode one file and write its cache pickle; returns an index row.

    Raises AudioError (or OSError) with the reason when the file is unusable,
    CacheWriteError when the pickle cannot be written.
    """
    trimmed = load_utterance(utterance.path, config)
    record = {
        "filename": str(utterance.path),
        "speaker_id": utterance.speaker_id,
        "utterance_id": utterance.utterance_id,
        "sample_rate": config.sample_rate_hz,
        "left_blank_duration_ms": float(trimmed.left_blank_duration_ms),
        "right_blank_duration_ms": float(trimmed.right_blank_duration_ms),
        "audio_voice_only": np.ascontiguousarray(trimmed.audio_voice_only),
        "audio": trimmed.audio,
    }
    # No fsync per utterance (it doubled the cost of small files): the rename
    # already keeps a killed run from leaving half a pickle; a power cut may
    # lose the last files, which the next --update_cache run simply redoes.
    target = output_dir / utterance.cache_name
    try:
        atomic_write_pickle(target, record, durable=False)
    except OSError as error:
        raise CacheWriteError(error.errno, f"cannot write the audio cache ({error.strerror or error})",
                              str(target)) from None
    return index_row(record, utterance.cache_name)


def index_row(record: dict, cache_name: str) -> dict:
    rate = record["sample_rate"]
    return {
        "cache_file": cache_name,
        "speaker_id": record["speaker_id"],
        "utterance_id": record["utterance_id"],
        "duration_s": len(record["audio"]) / rate,
        "voice_s": len(record["audio_voice_only"]) / rate,
        "source": record["filename"],
    }


def _cache_one(job: tuple[Utterance, Path, Config]) -> tuple[Utterance, dict | None, str | None]:
    utterance, output_dir, config = job
    try:
        return utterance, cache_utterance(utterance, output_dir, config), None
    except CacheWriteError:
        raise  # not this file's fault: stop the run
    except (AudioError, OSError, ValueError) as error:
        return utterance, None, str(error).splitlines()[0] if str(error) else type(error).__name__
    except Exception as error:  # one bad file never kills a batch of thousands
        return utterance, None, f"unexpected {type(error).__name__}: {error}"


def build_audio_cache(audio_dirs, cache_dir: str | Path, config: Config, *, regenerate: bool,
                      workers: int = 1, shard: tuple[int, int] | None = None, mic: int = 1,
                      lock_timeout: float | None = None) -> CacheSummary:
    """Cache every utterance found in `audio_dirs`.

    regenerate=True wipes `audio_cache_pkl/` (only it and its index) first; a
    regenerate that was killed is resumed, not restarted, by the next one. With
    a shard, regenerate wipes only that shard's pickles, so the N jobs of a job
    array never undo each other's work.
    regenerate=False (update) caches only the files not cached yet.

    The run holds `deep_speaker.locking.cache_lock` (exclusive without a shard;
    shared with the other shards plus its own shard's lock with one), so a second
    run on the same cache waits for it, or gives up after `lock_timeout` seconds.
    A write error (disk full, read-only folder) stops the run with CacheWriteError;
    the files cached so far stay and a rerun resumes.
    """
    started = time.monotonic()
    cache_dir = Path(cache_dir)
    utterances = [u for u in discover_utterances(audio_dirs, mic=mic) if in_shard(u, shard)]
    if not utterances:
        raise FileNotFoundError(f"no audio files (.wav .flac .ogg .mp3) found under {', '.join(map(str, audio_dirs))}")
    with cache_lock(cache_dir, shard, timeout=lock_timeout, purpose="audio cache"):
        summary = _build_locked(utterances, cache_dir, config, regenerate, workers, shard)
    summary.wall_seconds = time.monotonic() - started
    return summary


def _build_locked(utterances: list[Utterance], cache_dir: Path, config: Config, regenerate: bool, workers: int,
                  shard: tuple[int, int] | None) -> CacheSummary:
    output_dir = audio_cache_dir(cache_dir)
    marker = output_dir / (REGENERATING_MARKER if shard is None
                           else f"{REGENERATING_MARKER}.shard-{shard[0]}-of-{shard[1]}")
    if regenerate and not marker.exists():
        if shard is None:
            _wipe_audio_cache(cache_dir)
        else:
            _wipe_shard(output_dir, shard)
    output_dir.mkdir(parents=True, exist_ok=True)
    _record_audio_settings(cache_dir, config)
    if regenerate:
        marker.touch()
    _remove_stale_temps(cache_dir, shard)

    summary = CacheSummary()
    # A file the 2018 code cached (<stem>_cache.pkl) is cached too: no second copy under our name.
    todo = [u for u in utterances if not (output_dir / u.cache_name).exists()
            and not (output_dir / f"{u.path.stem}{SEED_CACHE_SUFFIX}.pkl").exists()]
    summary.skipped = len(utterances) - len(todo)
    index_path = cache_dir / INDEX_DIR / f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}.tsv"
    index_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(u, output_dir, config) for u in todo]
    try:
        with open(index_path, "a", encoding="utf-8") as index_file, \
                progress_bar(total=len(jobs), desc="audio cache", unit="file") as bar:
            chunksize = max(1, min(16, len(jobs) // (max(workers, 1) * 8)))
            for utterance, row, error in map_jobs(_cache_one, jobs, workers, chunksize):
                bar.update(1)
                if error is not None:
                    summary.failed.append((str(utterance.path), error))
                    continue
                summary.cached += 1
                summary.audio_seconds += row["duration_s"]
                index_file.write("\t".join(str(row[c]) for c in INDEX_COLUMNS) + "\n")
                index_file.flush()
    finally:  # also when a write error stops the run: no empty index files
        if index_path.exists() and index_path.stat().st_size == 0:
            index_path.unlink()
    _write_failures(cache_dir, summary.failed, shard)
    if regenerate:
        marker.unlink(missing_ok=True)
    return summary


def audio_settings_path(cache_dir: str | Path) -> Path:
    return audio_cache_dir(cache_dir) / SETTINGS_FILE


def read_audio_settings(cache_dir: str | Path) -> tuple[dict, bool]:
    """(settings, recorded) of an audio cache: its settings.json; else, for a cache
    of the 2018 code, `SEED_AUDIO_SETTINGS`; else (a cache made before settings
    were recorded) the rate of its records with the default trim, recorded=False.
    A settings.json that is not valid is an InputError naming it."""
    path = audio_settings_path(cache_dir)
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            settings = {name: values[name] for name in AUDIO_FIELDS}
            Config().override(**settings).validate()
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path}: not a readable cache settings file ({type(error).__name__}: {error}); "
                             f"rebuild the cache with preprocess.py --regenerate_full_cache") from None
        return settings, True
    first = next(iter(sorted(audio_cache_dir(cache_dir).glob("*.pkl"))), None)
    if first is not None:
        try:
            raw = load_pickle(first)
        except ValueError:
            raw = None
        if isinstance(raw, dict) and _is_seed_record(raw):
            return dict(SEED_AUDIO_SETTINGS), True
        if isinstance(raw, dict) and isinstance(raw.get("sample_rate"), (int, np.integer)):
            return {**Config().audio_settings(), "sample_rate_hz": int(raw["sample_rate"])}, False
    return Config().audio_settings(), False


def audio_settings_mismatch(recorded: dict, config: Config) -> list[str]:
    """'field: cache vs config' for each setting that changes what a cached
    utterance holds (the rate and the trim rule with its own parameter; the
    minimum length only rejects files, so it may differ).

    >>> audio_settings_mismatch(Config(trim='energy').audio_settings(), Config())
    ["trim: 'energy' vs 'percentile'"]
    """
    fields = ["sample_rate_hz", "trim", "trim_percentile" if config.trim == "percentile" else "trim_top_db"]
    return [f"{name}: {recorded.get(name)!r} vs {getattr(config, name)!r}" for name in fields
            if recorded.get(name) != getattr(config, name)]


def check_audio_settings(cache_dir: str | Path, config: Config, what: str) -> dict:
    """The cache's audio settings when `config` (of `what`: a model, a run) uses
    the same ones; else SettingsMismatchError in one line. An unrecorded cache is
    assumed to match, with a warning."""
    settings, recorded = read_audio_settings(cache_dir)
    different = audio_settings_mismatch(settings, config)
    if different and recorded:
        raise SettingsMismatchError(f"{audio_cache_dir(cache_dir)} was made with other audio settings than {what} "
                                    f"({'; '.join(different)}, cache vs {what})")
    if not recorded:
        log.warning("%s records no audio settings (made before they were recorded): assuming %s's (%s); "
                    "rebuild it with --regenerate_full_cache if it was made with another --trim",
                    audio_cache_dir(cache_dir), what, ", ".join(f"{k}={getattr(config, k)!r}" for k in AUDIO_FIELDS))
        settings = config.audio_settings()
    return settings


def _record_audio_settings(cache_dir: Path, config: Config) -> None:
    """Write this run's audio settings beside the pickles, or refuse to add files
    made with other settings to a cache that records its own."""
    path = audio_settings_path(cache_dir)
    if path.is_file() or any(audio_cache_dir(cache_dir).glob("*.pkl")):
        settings, recorded = read_audio_settings(cache_dir)
        different = audio_settings_mismatch(settings, config)
        if recorded and different:
            raise SettingsMismatchError(
                f"{audio_cache_dir(cache_dir)} holds audio cached with other settings ({'; '.join(different)}, "
                f"cache vs this run): pass the same flags (e.g. --trim {settings['trim']}), or rebuild it with "
                f"--regenerate_full_cache (without --shard)")
        if not recorded:
            log.warning("%s records no audio settings (made before they were recorded); adding files made with "
                        "trim=%s", audio_cache_dir(cache_dir), config.trim)
            return
        if path.is_file():
            return
    atomic_write_text(path, json.dumps({"config_version": CONFIG_VERSION, **config.audio_settings()},
                                       indent=2, sort_keys=True) + "\n")


def _remove_stale_temps(cache_dir: Path, shard: tuple[int, int] | None) -> None:
    """Delete the temp files a killed run left. Without a shard this run holds
    the cache alone, so every stage-1 temp file is stale; a shard removes only
    its own shard's (the other shards, running now, are writing theirs)."""
    output_dir = audio_cache_dir(cache_dir)
    if shard is None:
        remove_stale_temp_files(output_dir)
        remove_stale_temp_files(cache_dir / INDEX_DIR)
        stale = cache_dir.glob(f".{failures_path(cache_dir).name}.*.tmp")
    else:
        # temp names are .<utterance_id>.pkl.<random>.tmp (io_utils.atomic_write)
        stale = [tmp for tmp in output_dir.glob(".*.pkl.*.tmp")
                 if id_in_shard(tmp.name[1:].rsplit(".pkl.", 1)[0], shard)]
        stale += list(cache_dir.glob(f".{failures_path(cache_dir, shard).name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)


def _wipe_audio_cache(cache_dir: Path) -> None:
    for name in (AUDIO_CACHE_DIR, INDEX_DIR):
        folder = cache_dir / name
        if folder.exists():
            count = sum(1 for _ in folder.iterdir())
            log.info("regenerate: wiping %s (%d files); inputs and checkpoints are kept", folder, count)
            shutil.rmtree(folder)


def _wipe_shard(output_dir: Path, shard: tuple[int, int]) -> None:
    """Delete this shard's pickles only; index rows of deleted pickles are ignored
    by `read_cache_index`, and re-cached files get fresh rows."""
    removed = 0
    for path in output_dir.glob("*.pkl") if output_dir.is_dir() else ():
        if id_in_shard(path.stem, shard):
            path.unlink(missing_ok=True)
            removed += 1
    log.info("regenerate: wiped %d cached files of shard %d/%d in %s", removed, shard[0], shard[1], output_dir)


def failures_path(cache_dir: str | Path, shard: tuple[int, int] | None = None) -> Path:
    """Where a cache run lists the files it could not cache (one file per shard)."""
    name = "failures.tsv" if shard is None else f"failures.shard-{shard[0]}-of-{shard[1]}.tsv"
    return Path(cache_dir) / name


def _write_failures(cache_dir: Path, failures: list[tuple[str, str]], shard) -> None:
    lines = ["path\treason"] + [f"{path}\t{reason}" for path, reason in failures]
    atomic_write_text(failures_path(cache_dir, shard), "\n".join(lines) + "\n")


def read_cache_index(cache_dir: str | Path) -> dict[str, dict]:
    """Index rows of every cached utterance, by cache file name.

    Pickles missing from the index (a run killed before it wrote its row, or a
    cache copied from elsewhere) are opened once to recover their row; unsafe
    or unreadable pickles are left out and logged.
    """
    cache_dir = Path(cache_dir)
    output_dir = audio_cache_dir(cache_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir}: no audio cache (run preprocess.py --regenerate_full_cache first)")
    present = {p.name for p in output_dir.glob("*.pkl")}
    rows: dict[str, dict] = {}
    for index_file in sorted((cache_dir / INDEX_DIR).glob("*.tsv")):
        for line in index_file.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) != len(INDEX_COLUMNS) or parts[0] not in present:
                continue  # a half-written last line, or a pickle since removed
            row = dict(zip(INDEX_COLUMNS, parts))
            try:
                row["duration_s"], row["voice_s"] = float(row["duration_s"]), float(row["voice_s"])
            except ValueError:
                continue  # a damaged line: the pickle is opened below instead
            rows[row["cache_file"]] = row
    missing = sorted(present - rows.keys())
    if missing:
        recovered = []
        for name in missing:
            try:
                record = load_cached_utterance(output_dir / name)
            except ValueError as error:
                log.warning("%s", error)
                continue
            rows[name] = index_row(record, name)
            recovered.append(rows[name])
        if recovered:
            _append_index(cache_dir, recovered)
    return dict(sorted(rows.items()))


def _append_index(cache_dir: Path, rows: list[dict]) -> None:
    path = cache_dir / INDEX_DIR / f"recovered-{os.getpid()}-{int(time.time())}.tsv"
    text = "".join("\t".join(str(r[c]) for c in INDEX_COLUMNS) + "\n" for r in rows)
    try:
        atomic_write_text(path, text)
    except OSError:
        pass  # a read-only cache still works, it is just slower next time


REQUIRED_KEYS = ("filename", "speaker_id", "utterance_id", "sample_rate", "left_blank_duration_ms",
                 "right_blank_duration_ms", "audio_voice_only", "audio")
# What a record of the 2018 code holds (and nothing of ours beyond it).
SEED_KEYS = ("filename", "left_blank_duration_ms", "right_blank_duration_ms", "audio_voice_only", "audio")


def _is_seed_record(record: dict) -> bool:
    return all(key in record for key in SEED_KEYS) and not any(
        key in record for key in ("speaker_id", "utterance_id", "sample_rate"))


def load_cached_utterance(path: str | Path) -> dict:
    """One cache pickle, checked: a dict with the keys above, string ids, a
    positive integer rate and finite float audio, returned with 1-D arrays;
    InputError (a ValueError) naming the file. A record of the 2018 code gets
    its ids from `corpus.seed_cache_ids` and that code's rate (8 kHz)."""
    path = Path(path)
    record = load_pickle(path)
    if isinstance(record, dict) and _is_seed_record(record) and isinstance(record["filename"], str):
        speaker_id, utterance_id = seed_cache_ids(record["filename"], path.name)
        record = {**record, "speaker_id": speaker_id, "utterance_id": utterance_id,
                  "sample_rate": SEED_AUDIO_SETTINGS["sample_rate_hz"]}
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED_KEYS):
        raise InputError(f"{path}: not an audio cache record (missing keys)")
    for key in ("filename", "speaker_id", "utterance_id"):
        if not isinstance(record[key], str):
            raise InputError(f"{path}: not an audio cache record ({key} is not a string)")
    rate = record["sample_rate"]
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise InputError(f"{path}: not an audio cache record (sample_rate {rate!r})")
    for key in ("audio", "audio_voice_only"):
        value = record[key]
        # (n, 1) is how the 2018 code stored a mono signal; we store (n,).
        if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 1:
            value = record[key] = value[:, 0]
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            raise InputError(f"{path}: {key} is not a 1-D (or (n, 1)) array")
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise InputError(f"{path}: {key} is not finite floating-point audio")
    return record


def speakers_in_cache(index: dict[str, dict]) -> dict[str, list[str]]:
    """Cache file names grouped by speaker, both sorted."""
    by_speaker: dict[str, list[str]] = {}
    for name, row in index.items():
        by_speaker.setdefault(row["speaker_id"], []).append(name)
    return {speaker: sorted(names) for speaker, names in sorted(by_speaker.items())}
