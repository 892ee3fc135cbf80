"""Stage 2: training inputs (`preprocess.py --generate_training_inputs`).

Reads the audio cache only. Per speaker it writes ``<cache>/inputs/<speaker>.pkl``:
``train``/``test`` (lists of (num_frames, num_fbanks) float32 arrays, one per
utterance, per-utterance normalised: see `deep_speaker.features`), ``speaker_id``,
``mean_train``/``std_train`` (raw log-fbank statistics of the train part, kept for
the seed's format), the utterance ids of each part and the feature settings.
``<cache>/full_inputs.pkl`` maps every speaker to that same dict; it is written
speaker by speaker so memory stays flat in the number of speakers.

The pickles hold only data derived from the cache contents, so the same cache
gives bit-identical inputs. What decides whether a speaker is up to date (names,
sizes and modification times of its cached files, and the settings) is kept in a
text sidecar beside each pickle, ``<speaker>.pkl.sig`` (and ``full_inputs.pkl.sig``):
written after its pickle, so a run killed in between just redoes that file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deep_speaker.audio import change_speed
from deep_speaker.augmentation import AUGMENTATION_VERSION, augment_utterance, utterance_rng
from deep_speaker.audio_cache import (audio_cache_dir, load_cached_utterance, read_audio_settings, read_cache_index,
                                      speakers_in_cache)
from deep_speaker.config import CONFIG_VERSION, DATA_FIELDS, Config
from deep_speaker.errors import InputError, SettingsMismatchError
from deep_speaker.corpus import (augmented_speaker_id, default_unseen_speakers, perturbed_speaker_id,  # noqa: F401
                                 pseudo_speaker_id, split_pseudo_speaker_id, strip_pseudo_suffix)
from deep_speaker.features import compute_fbank, normalize_utterance
from deep_speaker.io_utils import atomic_write, atomic_write_pickle, atomic_write_text, load_pickle, remove_stale_temp_files
from deep_speaker.locking import cache_lock
from deep_speaker.parallel import map_jobs
from deep_speaker.progress import progress_bar

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"
SETTINGS_FILE = "settings.json"  # inputs/settings.json: the data settings of the whole set, and its pseudo-speakers
FULL_INPUTS = "full_inputs.pkl"
FAILURES = "inputs_failures.tsv"
SIGNATURE_SUFFIX = ".sig"  # <inputs pickle>.sig: the signature it was made from
MS_PER_HOUR = 3_600_000.0


class InputsWriteError(OSError):
    """Writing the inputs failed (disk full, read-only folder, ...): the stage
    stops, and the inputs written before, by this or an earlier run, stay."""


@dataclass
class InputsSummary:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (speaker or file, reason)
    unseen: list[str] = field(default_factory=list)
    frames: int = 0
    wall_seconds: float = 0.0
    frame_shift_ms: float = Config.frame_shift_ms  # what one frame of `frames` stands for

    def line(self) -> str:
        hours = self.frames * self.frame_shift_ms / MS_PER_HOUR
        return (f"training inputs: {self.written} speakers written, {self.skipped} up to date, "
                f"{len(self.failed)} failed, {len(self.unseen)} left out as unseen "
                f"({','.join(self.unseen) or '-'}), {hours:.2f} h of voiced audio, {self.wall_seconds:.1f} s wall")


def split_utterances(utterance_ids: list[str], speaker_id: str, config: Config) -> tuple[list[int], list[int]]:
    """Seeded train/test split of a speaker's utterances, as index lists.

    At least one utterance trains, and one tests when the speaker has two or more.

    >>> split_utterances(['a', 'b', 'c', 'd', 'e'], 'x', Config())[1].__len__()
    1
    """
    count = len(utterance_ids)
    seed = config.split_seed + zlib.crc32(speaker_id.encode())
    order = np.random.default_rng(seed).permutation(count)
    num_test = int(round(count * config.test_fraction))
    num_test = min(max(num_test, 1 if count >= 2 else 0), count - 1)
    return sorted(order[num_test:].tolist()), sorted(order[:num_test].tolist())


def pseudo_speaker_origin(speaker_id: str, inputs: dict) -> tuple[str, float, int]:
    """(source speaker, speed, augmented copy) of one speaker's inputs, from what
    stage 2 recorded in them rather than from the id's spelling: a real speaker
    folder named ``Ann-aug2`` is speed 1, copy 0, so it stays a speaker of its own.
    Inputs written before the source speaker was recorded lose exactly the
    suffixes their recorded speed and copy put on (`corpus.strip_pseudo_suffix`).

    >>> pseudo_speaker_origin('Ann-aug2', {'speed': 1.0, 'augmented_copy': 0})
    ('Ann-aug2', 1.0, 0)
    >>> pseudo_speaker_origin('Ann-sp0.9-aug1', {'speed': 0.9, 'augmented_copy': 1, 'source_speaker_id': 'Ann'})
    ('Ann', 0.9, 1)
    """
    speed = float(inputs.get("speed", 1.0))
    copy = int(inputs.get("augmented_copy", 0))
    source = inputs.get("source_speaker_id")
    if not isinstance(source, str):
        source = strip_pseudo_suffix(speaker_id, speed, copy)
    return source, speed, copy


def merge_augmented_copies(inputs: dict[str, dict]) -> dict[str, dict]:
    """Inputs where each augmented copy's training utterances join its
    speaker's: a noisy copy is the same voice, never a class of its own.

    Copies carry no test part (stage 2 writes none); a copy whose speaker is
    not in `inputs` is dropped.
    """
    def base(speaker_id: str, data: dict) -> str:
        source, speed, _ = pseudo_speaker_origin(speaker_id, data)
        return perturbed_speaker_id(source, speed)

    return _merge_training_data(inputs, base)


def merge_perturbed_speakers(inputs: dict[str, dict]) -> dict[str, dict]:
    """Inputs where each speed-perturbed pseudo-speaker's training utterances
    join its speaker's (config.perturbed_speakers == "augment").

    Only ``train`` grows: a pseudo-speaker's test utterances are perturbed
    copies of its speaker's test utterances (same split), so they are dropped
    rather than leak into training or duplicate the test set. A pseudo-speaker
    whose speaker is not in `inputs` (held out, or filtered) is dropped too.
    """
    return _merge_training_data(inputs, lambda speaker_id, data: pseudo_speaker_origin(speaker_id, data)[0])


def _merge_training_data(inputs: dict[str, dict], base_speaker_id) -> dict[str, dict]:
    """Inputs of the speakers that are their own base, each with the training
    utterances of the pseudo-speakers made from it appended (in sorted id order);
    the caller's lists are left as they were."""
    bases = {speaker: base_speaker_id(speaker, data) for speaker, data in inputs.items()}
    merged = {speaker: {**data, "train": list(data["train"])} for speaker, data in inputs.items()
              if bases[speaker] == speaker}
    for speaker, data in sorted(inputs.items()):
        base = bases[speaker]
        if base != speaker and base in merged:
            merged[base]["train"].extend(data["train"])
    return merged


def speaker_inputs(speaker_id: str, cache_files: list[Path], config: Config, speed: float = 1.0,
                   copy: int = 0) -> dict:
    """The inputs dict of one speaker from its cached utterances (at `speed`,
    as the pseudo-speaker `corpus.perturbed_speaker_id(speaker_id, speed)`; with
    copy > 0, its augmented copy `corpus.augmented_speaker_id(..., copy)`: degraded
    training utterances (`deep_speaker.augmentation`) and no test part)."""
    voices, utterance_ids = [], []
    for path in cache_files:
        record = load_cached_utterance(path)
        if record["sample_rate"] != config.sample_rate_hz:
            raise SettingsMismatchError(f"{path}: cached at {record['sample_rate']} Hz, "
                                        f"config wants {config.sample_rate_hz} Hz")
        voices.append(record["audio_voice_only"])
        utterance_ids.append(record["utterance_id"])

    def features_of(index: int) -> np.ndarray:
        voice = voices[index]
        if speed != 1.0:
            voice = change_speed(voice, config.sample_rate_hz, speed)
        if copy:
            voice = augment_utterance(voice, config.sample_rate_hz,
                                      utterance_rng(f"{utterance_ids[index]}@{speed:g}", copy))
        return compute_fbank(voice, config)

    # An augmented copy keeps no test part: degraded test utterances would only
    # duplicate the speaker's test set.
    keep_test = copy == 0
    if len(voices) == 1:
        # One utterance: split it in time, the first part trains.
        frames = features_of(0)
        cut = max(1, int(round(len(frames) * (1 - config.test_fraction))))
        train_raw, test_raw = [frames[:cut]], [frames[cut:]] if keep_test and cut < len(frames) else []
        train_ids, test_ids = [utterance_ids[0]], [utterance_ids[0]] if test_raw else []
    else:
        train_idx, test_idx = split_utterances(utterance_ids, speaker_id, config)
        test_idx = test_idx if keep_test else []
        train_raw, test_raw = [features_of(i) for i in train_idx], [features_of(i) for i in test_idx]
        train_ids, test_ids = [utterance_ids[i] for i in train_idx], [utterance_ids[i] for i in test_idx]
    stacked = np.concatenate(train_raw, axis=0)
    return {
        "speaker_id": pseudo_speaker_id(speaker_id, speed, copy),
        "source_speaker_id": speaker_id,  # the real speaker: ids are never parsed back (corpus.py)
        "speed": speed,
        "augmented_copy": copy,
        "train": [normalize_utterance(f) for f in train_raw],
        "test": [normalize_utterance(f) for f in test_raw],
        "train_utterances": train_ids,
        "test_utterances": test_ids,
        "mean_train": stacked.mean(axis=0).astype(np.float32),
        "std_train": stacked.std(axis=0).astype(np.float32),
        "feature_settings": config.feature_settings(),
        # What preprocess.py decided about this speaker's data (the audio settings come
        # from the cache's record): training copies it into the checkpoint's config.json.
        # The speed factors and copies are what the set of inputs holds, so they are
        # read from all speakers' speed/augmented_copy instead (`inputs_data_settings`).
        "data_settings": speaker_data_settings(config),
    }


_variant_id = pseudo_speaker_id


def speaker_data_settings(config: Config) -> dict:
    """The data settings one speaker's inputs depend on: `Config.data_settings`
    less the speed factors and copy count, which concern the whole set."""
    return {k: v for k, v in config.data_settings().items() if k not in ("speed_perturbations", "augment_copies")}


def inputs_data_settings(inputs: dict[str, dict]) -> dict | None:
    """The data settings of a set of training inputs: what every speaker's
    pickle records (they must agree; SettingsMismatchError names one that does
    not), with the speed factors and copy count the set holds. None for inputs
    written before pickles recorded their settings.

    >>> one = {'data_settings': {'trim': 'energy'}, 'speed': 1.0, 'augmented_copy': 0}
    >>> inputs_data_settings({'a': one, 'a-sp0.9-aug1': {**one, 'speed': 0.9, 'augmented_copy': 1}})
    {'trim': 'energy', 'speed_perturbations': [0.9], 'augment_copies': 1}
    """
    recorded = {speaker: data.get("data_settings") for speaker, data in inputs.items()}
    if not recorded or any(not isinstance(value, dict) for value in recorded.values()):
        return None
    (first, settings), *rest = sorted(recorded.items())
    for speaker, other in rest:
        if other != settings:
            different = sorted(k for k in settings.keys() | other.keys() if settings.get(k) != other.get(k))
            raise SettingsMismatchError(
                f"inputs of {first} and {speaker} were made with different settings "
                f"({', '.join(f'{k}: {settings.get(k)!r} vs {other.get(k)!r}' for k in different)}); "
                f"regenerate the training inputs")
    speeds = sorted({float(data.get("speed", 1.0)) for data in inputs.values()} - {1.0})
    copies = max(int(data.get("augmented_copy", 0)) for data in inputs.values())
    return {**settings, "speed_perturbations": speeds, "augment_copies": copies}


def _signature(cache_files: list[Path], config: Config, speed: float, copy: int) -> str:
    """Changes when the speaker's cached files or its data settings change."""
    digest = hashlib.sha1()
    for path in cache_files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    digest.update(repr(sorted(speaker_data_settings(config).items())).encode())
    digest.update(f"{config.test_fraction}:{config.split_seed}:{speed}".encode())
    if copy:
        digest.update(f":aug{copy}:v{AUGMENTATION_VERSION}".encode())
    return digest.hexdigest()


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def _is_up_to_date(path: Path, signature: str) -> bool:
    """The pickle exists, was made from `signature`, and loads as inputs (a
    refused or damaged pickle is reported, then rebuilt)."""
    try:
        if not path.exists() or signature_path(path).read_text().strip() != signature:
            return False
    except (OSError, ValueError):
        return False
    try:
        load_inputs_file(path)
    except ValueError as error:
        log.warning("%s; rebuilding it", error)
        return False
    return True


def _write_with_signature(path: Path, write, signature: str, stamp: bool = False) -> None:
    """The pickle first, its signature last; OSError becomes InputsWriteError.

    A run stopped in between leaves the old signature, which no longer matches
    (that is why the file was being rebuilt), so the next run rebuilds it again.
    """
    try:
        write()
        atomic_write_text(signature_path(path), signature + (f" {_file_stamp(path)}" if stamp else "") + "\n")
    except OSError as error:
        raise InputsWriteError(error.errno, f"cannot write training inputs ({error.strerror or error})",
                               str(error.filename or path)) from None


def _speaker_job(job: tuple[str, list[Path], Path, Config, float, int]) -> tuple[str, str, int, str | None]:
    """Writes one (pseudo-)speaker's inputs; returns (id, 'written'|'skipped'|'failed', frames, error)."""
    base_speaker, cache_files, output_path, config, speed, copy = job
    speaker_id = _variant_id(base_speaker, speed, copy)
    try:
        signature = _signature(cache_files, config, speed, copy)
        if _is_up_to_date(output_path, signature):
            return speaker_id, "skipped", 0, None
        inputs = speaker_inputs(base_speaker, cache_files, config, speed, copy)
    except Exception as error:  # one bad speaker never stops the others
        output_path.unlink(missing_ok=True)  # no stale inputs from an older cache: it is left out everywhere
        signature_path(output_path).unlink(missing_ok=True)
        return speaker_id, "failed", 0, str(error).splitlines()[0] if str(error) else type(error).__name__
    # A write error is no fault of this speaker: it stops the stage (InputsWriteError).
    _write_with_signature(output_path, lambda: atomic_write_pickle(output_path, inputs), signature)
    return speaker_id, "written", sum(len(f) for f in inputs["train"] + inputs["test"]), None


def generate_training_inputs(cache_dir: str | Path, config: Config, *, unseen_speakers=None,
                             workers: int = 1, lock_timeout: float | None = None) -> InputsSummary:
    """Write the inputs pickles of every training speaker, then full_inputs.pkl.

    unseen_speakers=None applies the default (VCTK's four held-out speakers for
    VCTK ids, nobody otherwise); pass [] to train on everyone. The stage holds
    the cache's exclusive lock (`deep_speaker.locking`): it waits for audio-cache
    runs on the same folder (shards included), or gives up after `lock_timeout` s.
    A write error stops it with InputsWriteError, leaving earlier files intact.
    """
    started = time.monotonic()
    cache_dir = Path(cache_dir)
    if not audio_cache_dir(cache_dir).is_dir():
        read_cache_index(cache_dir)  # the clear "no audio cache" error, without creating the folder
    with cache_lock(cache_dir, timeout=lock_timeout, purpose="training inputs"):
        summary = _generate_locked(cache_dir, config, unseen_speakers, workers)
    summary.wall_seconds = time.monotonic() - started
    return summary


def _generate_locked(cache_dir: Path, config: Config, unseen_speakers, workers: int) -> InputsSummary:
    by_speaker = speakers_in_cache(read_cache_index(cache_dir))
    if not by_speaker:
        raise FileNotFoundError(f"{audio_cache_dir(cache_dir)}: audio cache is empty")
    # The audio settings are the cache's (stage 1 applied them), whatever `config` says.
    audio_settings, recorded = read_audio_settings(cache_dir)
    if not recorded:
        log.warning("%s records no audio settings (made before they were recorded): the inputs record %s",
                    audio_cache_dir(cache_dir), ", ".join(f"{k}={v!r}" for k, v in audio_settings.items()))
    config = config.override(**audio_settings).check_frame_fits_fft()
    if unseen_speakers is None:
        unseen_speakers = default_unseen_speakers(by_speaker)
    elif unknown := sorted(set(unseen_speakers) - by_speaker.keys()):
        raise InputError(f"unknown --unseen_speakers {','.join(unknown)}; the cache holds "
                         f"{len(by_speaker)} speakers: {_preview(by_speaker)}")
    summary = InputsSummary(unseen=sorted(set(unseen_speakers) & by_speaker.keys()),
                            frame_shift_ms=config.frame_shift_ms)
    inputs_dir = cache_dir / INPUTS_DIR
    inputs_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(inputs_dir)  # what a killed run left; this run holds the cache alone
    for name in (FULL_INPUTS, FULL_INPUTS + SIGNATURE_SUFFIX, FAILURES):
        for tmp in cache_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    training_speakers = [s for s in by_speaker if s not in set(unseen_speakers)]
    speeds = [1.0] + [float(f) for f in config.speed_perturbations if float(f) != 1.0]
    entries = [(s, speed, copy) for s in training_speakers for speed in speeds
               for copy in range(config.augment_copies + 1)]
    training = [_variant_id(*entry) for entry in entries]
    _refuse_id_collisions(entries, training, by_speaker)
    removed = 0
    for stale in inputs_dir.glob("*.pkl"):  # a speaker now unseen must not train
        if stale.stem not in training:
            stale.unlink()
            removed += 1
    for stale in inputs_dir.glob(f"*.pkl{SIGNATURE_SUFFIX}"):
        if not stale.with_suffix("").exists():
            stale.unlink()
    source_dir = audio_cache_dir(cache_dir)
    jobs = [(s, [source_dir / n for n in by_speaker[s]], inputs_dir / f"{_variant_id(s, speed, copy)}.pkl", config,
             speed, copy) for s, speed, copy in entries]
    with progress_bar(total=len(jobs), desc="training inputs", unit="speaker") as bar:
        for speaker_id, status, frames, error in map_jobs(_speaker_job, jobs, workers):
            bar.update(1)
            if status == "failed":
                summary.failed.append((speaker_id, error))
            elif status == "skipped":
                summary.skipped += 1
            else:
                summary.written += 1
                summary.frames += frames
    done = [s for s in training if s not in {f for f, _ in summary.failed}]
    speaker_files = [inputs_dir / f"{s}.pkl" for s in done]
    full_path = cache_dir / FULL_INPUTS
    signature = _full_signature(speaker_files)
    if not (full_path.exists() and _read_signature(full_path) == f"{signature} {_file_stamp(full_path)}"):
        if full_path.exists() and (_read_signature(full_path) or "").split(" ")[0] == signature:
            log.warning("%s changed since this stage wrote it; writing it again", full_path)
        # The sidecar also records the written file's size and time, so a
        # replaced full_inputs.pkl (which nothing here reads) is rewritten.
        _write_with_signature(full_path, lambda: write_full_inputs(full_path, speaker_files), signature,
                              stamp=True)
    lines = ["speaker\treason"] + [f"{s}\t{r}" for s, r in summary.failed]
    atomic_write_text(cache_dir / FAILURES, "\n".join(lines) + "\n")
    _write_inputs_settings(inputs_dir, config, entries, training, set(done), summary.unseen)
    return summary


def _write_inputs_settings(inputs_dir: Path, config: Config, entries, ids, done: set, unseen) -> None:
    """inputs/settings.json: the data settings every pickle records, the speed
    factors and copy count the set holds, and which ids are pseudo-speakers of
    whom, so readers never guess that from an id's spelling."""
    pseudo = {speaker_id: {"speaker": speaker, "speed": speed, "copy": copy}
              for (speaker, speed, copy), speaker_id in zip(entries, ids)
              if speaker_id in done and (speed, copy) != (1.0, 0)}
    record = {**speaker_data_settings(config),
              "speed_perturbations": sorted({float(f) for f in config.speed_perturbations} - {1.0}),
              "augment_copies": config.augment_copies, "augmentation_version": AUGMENTATION_VERSION,
              "config_version": CONFIG_VERSION, "unseen_speakers": list(unseen), "pseudo_speakers": pseudo}
    atomic_write_text(inputs_dir / SETTINGS_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_inputs_settings(cache_dir: str | Path) -> dict | None:
    """inputs/settings.json of a cache, or None when stage 2 ran before it was
    written; an unreadable one is an InputError naming it."""
    path = Path(cache_dir) / INPUTS_DIR / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("pseudo_speakers"), dict):
            raise ValueError("not an object with pseudo_speakers")
        Config().override(**{k: record[k] for k in DATA_FIELDS}).validate()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a readable inputs settings file ({type(error).__name__}: {error}); "
                         f"regenerate the training inputs") from None
    return record


def legacy_inputs_data_settings(cache_dir: str | Path) -> dict:
    """The data settings of inputs made before stage 2 recorded them (no
    inputs/settings.json): the cache's audio settings (`read_audio_settings`) and
    the speed factors and copy count read from the inputs' file names, a guess
    (`corpus.split_pseudo_speaker_id`) that regenerating the inputs replaces by
    the record. Reads no frames, so a streaming run can afford it."""
    audio, recorded = read_audio_settings(cache_dir)
    names = [path.stem for path in (Path(cache_dir) / INPUTS_DIR).glob("*.pkl")]
    parsed = [split_pseudo_speaker_id(name) for name in names]
    log.warning("%s/inputs record no data settings (made before they were recorded): config.json gets %s audio "
                "settings and speed factors and copies read from the speaker ids; regenerate the training inputs "
                "for an exact record", cache_dir, "the cache's" if recorded else "assumed")
    return {**audio, "speed_perturbations": sorted({speed for _, speed, _ in parsed} - {1.0}),
            "augment_copies": max((copy for _, _, copy in parsed), default=0)}


def pseudo_speaker_origins(cache_dir: str | Path) -> dict[str, tuple[str, float, int]] | None:
    """{pseudo-speaker id: (source speaker, speed, copy)} as stage 2 recorded them
    (real speakers are not in it), or None for inputs made before the record."""
    record = read_inputs_settings(cache_dir)
    if record is None:
        return None
    return {name: (str(o["speaker"]), float(o["speed"]), int(o["copy"])) for name, o in record["pseudo_speakers"].items()}


def unaugmented_speaker_id(speaker_id: str, origins: dict | None = None) -> str:
    """The (pseudo-)speaker an augmented copy was made from (itself when not a
    copy), by `origins` (`pseudo_speaker_origins`); without a record, read from
    the id's spelling (`corpus.split_pseudo_speaker_id`: a guess).

    >>> unaugmented_speaker_id('Ann-aug2', {}), unaugmented_speaker_id('Ann-sp0.9-aug1', {'Ann-sp0.9-aug1': ('Ann', 0.9, 1)})
    ('Ann-aug2', 'Ann-sp0.9')
    """
    source, speed, _ = _origin(speaker_id, origins)
    return perturbed_speaker_id(source, speed)


def unperturbed_speaker_id(speaker_id: str, origins: dict | None = None) -> str:
    """The real speaker a pseudo-speaker was made from (itself when real); see
    `unaugmented_speaker_id` for `origins`.

    >>> unperturbed_speaker_id('Ann-sp1.1', {'Ann-sp1.1': ('Ann', 1.1, 0)}), unperturbed_speaker_id('Bo-sp1.1', {})
    ('Ann', 'Bo-sp1.1')
    """
    return _origin(speaker_id, origins)[0]


def _origin(speaker_id: str, origins: dict | None) -> tuple[str, float, int]:
    if origins is None:
        return split_pseudo_speaker_id(speaker_id)
    return origins.get(speaker_id, (speaker_id, 1.0, 0))


def _refuse_id_collisions(entries, ids: list[str], by_speaker) -> None:
    """A pseudo-speaker id that is also a real speaker's (a folder named
    ``Ann-aug2`` beside ``Ann`` with --augment_copies 2) would overwrite one's
    inputs with the other's: refuse, naming both."""
    seen: dict[str, tuple] = {}
    for entry, speaker_id in zip(entries, ids):
        if speaker_id in seen or (entry[1:] != (1.0, 0) and speaker_id in by_speaker):
            other = seen.get(speaker_id, (speaker_id, 1.0, 0))
            raise InputError(f"speaker id {speaker_id!r} would name both {_describe(other)} and {_describe(entry)}; "
                             f"rename the speaker folder, or leave it out with --unseen_speakers")
        seen[speaker_id] = entry


def _describe(entry: tuple) -> str:
    speaker, speed, copy = entry
    if (speed, copy) == (1.0, 0):
        return f"the real speaker {speaker!r}"
    return f"{speaker!r} at speed {speed:g}" + (f", augmented copy {copy}" if copy else "")


def _full_signature(speaker_files: list[Path]) -> str:
    """Changes when the set of speakers or any speaker's inputs change."""
    digest = hashlib.sha1()
    for path in speaker_files:
        digest.update(f"{path.name}:{_read_signature(path)};".encode())
    return digest.hexdigest()


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _read_signature(path: Path) -> str | None:
    try:
        return signature_path(path).read_text().strip()
    except (OSError, ValueError):
        return None


def _preview(names, limit: int = 20) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def write_full_inputs(path: Path, speaker_files: list[Path]) -> None:
    """Write {speaker_id: inputs dict} one speaker at a time.

    A pickle of a dict is EMPTY_DICT then (key, value, SETITEM) per entry, so
    each speaker is pickled alone and appended: only one speaker is ever held in
    memory, and the file still loads with a plain pickle.load. Protocol 3 is
    used because its memo opcodes carry explicit indices (no framing), which
    keeps the independently pickled parts valid side by side.
    """
    def write(handle):
        handle.write(pickle.PROTO + bytes([3]) + pickle.EMPTY_DICT)
        for speaker_file in speaker_files:
            inputs = load_inputs_file(speaker_file)
            for part in (inputs["speaker_id"], inputs):
                body = pickle.dumps(part, protocol=3)
                handle.write(body[2:-1])  # drop this part's PROTO header and STOP
            handle.write(pickle.SETITEM)
        handle.write(pickle.STOP)

    atomic_write(path, write)


def load_inputs(cache_dir: str | Path, speakers=None) -> dict[str, dict]:
    """Inputs of the training speakers, {speaker_id: dict}, from ``inputs/``."""
    inputs_dir = Path(cache_dir) / INPUTS_DIR
    files = sorted(inputs_dir.glob("*.pkl"))
    if not files:
        raise FileNotFoundError(f"{inputs_dir}: no training inputs (run preprocess.py --generate_training_inputs)")
    loaded = {}
    for path in files:
        if speakers is not None and path.stem not in speakers:
            continue
        inputs = load_inputs_file(path)
        loaded[inputs["speaker_id"]] = inputs
    return loaded


def load_full_inputs(cache_dir: str | Path) -> dict[str, dict]:
    """``<cache>/full_inputs.pkl`` ({speaker_id: inputs dict}), the seed's
    all-in-one file, read through the restricted unpickler: use this rather
    than pickle.load on a cache from elsewhere. Raises ValueError naming the file."""
    path = Path(cache_dir) / FULL_INPUTS
    full = load_pickle(path)
    if not isinstance(full, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in full.items()):
        raise InputError(f"{path}: not a full_inputs file ({{speaker_id: inputs}} expected)")
    return full


def load_inputs_file(path: str | Path) -> dict:
    """One ``inputs/<speaker>.pkl`` through the restricted unpickler, checked: a
    dict with a string speaker_id and train/test lists of finite 2-D float
    arrays. Raises InputError, a ValueError, naming the file (UnsafePickleError when refused)."""
    inputs = load_pickle(path)
    if not isinstance(inputs, dict) or not isinstance(inputs.get("speaker_id"), str):
        raise InputError(f"{path}: not a training inputs file (no speaker_id)")
    for part in ("train", "test"):
        frames = inputs.get(part)
        if not isinstance(frames, list):
            raise InputError(f"{path}: not a training inputs file ({part} is not a list)")
        for item in frames:
            if (not isinstance(item, np.ndarray) or item.ndim != 2 or item.dtype.kind != "f"
                    or not np.all(np.isfinite(item))):
                raise InputError(f"{path}: not a training inputs file ({part} holds something other than "
                                 f"finite 2-D float features)")
    settings = inputs.get("feature_settings")
    if settings is not None and not isinstance(settings, dict):
        raise InputError(f"{path}: not a training inputs file (feature_settings is not a dict)")
    return inputs
