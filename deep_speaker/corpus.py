"""Find the utterances of a corpus and name them: the one place where speaker
and utterance ids are parsed, from paths, from the 2018 code's cache files, and
from the pseudo-speaker ids training inputs add.

Layouts (speaker = folder, as in the seed):
- VCTK 0.80: ``wav48/p225/p225_001.wav``
- VCTK 0.92: ``wav48_silence_trimmed/p225/p225_001_mic1.flac`` (mic 1 unless asked)
- LibriSpeech: ``<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``
- any folder-per-speaker tree: ``<root>/<Name>/**/*.wav|flac|ogg|mp3``; files lying
  directly in the root belong to a speaker named after the root folder.
- the 2018 code's audio cache: ``audio_cache_pkl/<file stem>_cache.pkl`` whose
  ``filename`` is the source path; speaker = its parent folder (`seed_cache_ids`).

Pseudo-speakers of the training inputs: ``<speaker>-sp<f>`` (speed factor f) and
``<speaker>[-sp<f>]-aug<k>`` (augmented copy k). Their ids are written here and
never parsed back to decide who is who: the inputs record each one's source
speaker, speed and copy, so a real speaker folder named ``Ann-aug2`` stays a
speaker of its own. `split_pseudo_speaker_id` reads a name only where nothing
else was recorded (a version-1 config.json's speaker list).
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from deep_speaker.errors import InputError

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
# The original implementation's four held-out VCTK speakers.
VCTK_DEFAULT_UNSEEN = ("p363", "p364", "p374", "p376")

_LIBRISPEECH_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")
# pNNN speakers, and VCTK 0.92's one speaker named s5.
_VCTK_NAME = re.compile(r"^([ps]\d+)_(\d+)(?:_mic([12]))?$")
_VCTK_SPEAKER = re.compile(r"^[ps]\d+$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Utterance:
    path: Path  # absolute path of the source file
    speaker_id: str
    utterance_id: str  # unique across the corpus; the cache file is <utterance_id>.pkl

    @property
    def cache_name(self) -> str:
        return f"{self.utterance_id}.pkl"


def perturbed_speaker_id(speaker_id: str, factor: float) -> str:
    """Id of a speed-perturbed pseudo-speaker; factor 1 is the speaker itself.

    >>> perturbed_speaker_id('p225', 0.9), perturbed_speaker_id('p225', 1.0)
    ('p225-sp0.9', 'p225')
    """
    return speaker_id if factor == 1.0 else f"{speaker_id}-sp{factor:g}"


def augmented_speaker_id(speaker_id: str, copy: int) -> str:
    """Id of the augmented copy `copy` of a (pseudo-)speaker; copy 0 is the speaker itself.

    >>> augmented_speaker_id('p225-sp0.9', 2), augmented_speaker_id('p225', 0)
    ('p225-sp0.9-aug2', 'p225')
    """
    return f"{speaker_id}-aug{copy}" if copy else speaker_id


def pseudo_speaker_id(speaker_id: str, speed: float = 1.0, copy: int = 0) -> str:
    """Id of the inputs made from real speaker `speaker_id` at `speed`, copy `copy`.

    >>> pseudo_speaker_id('Ann-aug2', 1.1, 1)
    'Ann-aug2-sp1.1-aug1'
    """
    return augmented_speaker_id(perturbed_speaker_id(speaker_id, speed), copy)


def strip_pseudo_suffix(speaker_id: str, speed: float, copy: int, *, keep_speed: bool = False) -> str:
    """The inverse of `pseudo_speaker_id` for a known speed and copy: the source
    speaker (or, keep_speed=True, the speed-perturbed pseudo-speaker a copy was
    made from). Only the recorded suffixes are removed, so `Ann-aug2` at speed 1,
    copy 0 is the real speaker `Ann-aug2`; an id that does not end in the
    recorded suffixes is an InputError.

    >>> strip_pseudo_suffix('Ann-aug2', 1.0, 0), strip_pseudo_suffix('Ann-sp0.9-aug1', 0.9, 1)
    ('Ann-aug2', 'Ann')
    >>> strip_pseudo_suffix('Ann-sp0.9-aug1', 0.9, 1, keep_speed=True)
    'Ann-sp0.9'
    """
    name = speaker_id
    if copy:
        suffix = f"-aug{copy}"
        if not name.endswith(suffix):
            raise InputError(f"speaker id {speaker_id!r} does not end in {suffix!r} although it is augmented copy {copy}")
        name = name[: -len(suffix)]
    if speed != 1.0 and not keep_speed:
        suffix = f"-sp{speed:g}"
        if not name.endswith(suffix):
            raise InputError(f"speaker id {speaker_id!r} does not end in {suffix!r} although its speed is {speed:g}")
        name = name[: -len(suffix)]
    return name


_PSEUDO_ID = re.compile(r"^(?P<speaker>.+?)(?:-sp(?P<speed>\d+(?:\.\d+)?))?(?:-aug(?P<copy>\d+))?$")


def split_pseudo_speaker_id(speaker_id: str) -> tuple[str, float, int]:
    """(speaker, speed, copy) read from an id's name alone: a guess, for records
    that do not say (a real speaker named like a pseudo-speaker is misread), so
    only for version-1 config.json files.

    >>> split_pseudo_speaker_id('p225-sp0.9-aug2'), split_pseudo_speaker_id('p225')
    (('p225', 0.9, 2), ('p225', 1.0, 0))
    """
    match = _PSEUDO_ID.match(speaker_id)
    if not match:
        return speaker_id, 1.0, 0
    return match["speaker"], float(match["speed"] or 1.0), int(match["copy"] or 0)


SEED_CACHE_SUFFIX = "_cache"  # the 2018 code named a cached file <source file stem>_cache.pkl


def seed_cache_ids(filename: str, cache_file: str) -> tuple[str, str]:
    """(speaker_id, utterance_id) of a record of the 2018 code's audio cache: the
    speaker is the source file's parent folder (its `extract_speaker_id`), the
    utterance the cache file's name less ``_cache.pkl``.

    >>> seed_cache_ids('/data/VCTK-Corpus/wav48/p225/p225_001.wav', 'p225_001_cache.pkl')
    ('p225', 'p225_001')
    >>> seed_cache_ids('C:\\vctk\\p226\\p226_002.wav', 'p226_002_cache.pkl')
    ('p226', 'p226_002')
    """
    parts = [part for part in re.split(r"[\\/]", filename) if part]
    if len(parts) < 2:
        raise InputError(f"{cache_file}: filename {filename!r} names no speaker folder")
    stem = cache_file[: -len(".pkl")] if cache_file.endswith(".pkl") else cache_file
    stem = stem[: -len(SEED_CACHE_SUFFIX)] if stem.endswith(SEED_CACHE_SUFFIX) else stem
    return parts[-2], stem


def is_vctk_speaker(speaker_id: str) -> bool:
    return bool(_VCTK_SPEAKER.match(speaker_id))


def default_unseen_speakers(speaker_ids) -> list[str]:
    """The seed's held-out VCTK speakers when the corpus is VCTK, else none."""
    speaker_ids = list(speaker_ids)
    if speaker_ids and all(is_vctk_speaker(s) for s in speaker_ids):
        return [s for s in VCTK_DEFAULT_UNSEEN]
    return []


def _clean(name: str) -> str:
    return _UNSAFE_CHARS.sub("_", name).strip("._") or "unnamed"


def parse_utterance(path: Path, root: Path, mic: int = 1) -> Utterance | None:
    """Speaker and utterance ids of one audio file under `root`; None when the
    file is another microphone's copy of a VCTK 0.92 utterance.

    >>> parse_utterance(Path('/c/wav48/p225/p225_001.wav'), Path('/c')).utterance_id
    'p225_001'
    >>> parse_utterance(Path('/c/wav48_silence_trimmed/s5/s5_001_mic1.flac'), Path('/c')).speaker_id
    's5'
    >>> parse_utterance(Path('/l/train/19/198/19-198-0001.flac'), Path('/l')).speaker_id
    '19'
    >>> parse_utterance(Path('/s/PhilippeRemy/PhilippeRemy_001.wav'), Path('/s')).speaker_id
    'PhilippeRemy'
    """
    stem = path.stem
    libri = _LIBRISPEECH_NAME.match(stem)
    if libri and path.parent.parent.name == libri.group(1):
        return Utterance(path, libri.group(1), stem)
    vctk = _VCTK_NAME.match(stem)
    if vctk and path.parent.name == vctk.group(1):
        if vctk.group(3) is not None and int(vctk.group(3)) != mic:
            return None
        return Utterance(path, vctk.group(1), f"{vctk.group(1)}_{vctk.group(2)}")
    relative = path.relative_to(root)
    speaker = _clean(relative.parts[0] if len(relative.parts) > 1 else root.name)
    rest = _clean("_".join(relative.parts[1:])[: -len(path.suffix)] if len(relative.parts) > 1 else stem)
    if rest.startswith(speaker + "_") or rest.startswith(speaker + "-"):
        return Utterance(path, speaker, rest)
    return Utterance(path, speaker, f"{speaker}_{rest}")


def file_speaker_id(path: Path) -> str:
    """The speaker of one audio file named by its own path, with no corpus root
    (a trial list's file, under a root that may hold several sets): the
    LibriSpeech and VCTK names as `parse_utterance` reads them, else the folder
    the file lies in. The caller makes sure there is such a folder.

    >>> file_speaker_id(Path('sets/test-other/1688/142285/1688-142285-0000.flac'))
    '1688'
    >>> file_speaker_id(Path('sets/vctk/p225/p225_001_mic2.flac'))
    'p225'
    >>> file_speaker_id(Path('sets/calls/W012/s1_006.ogg'))
    'W012'
    """
    path = Path(path)
    root = path.parent.parent  # so that the folder-per-speaker rule names the file's own folder
    return (parse_utterance(path, root, mic=1) or parse_utterance(path, root, mic=2)).speaker_id


def discover_utterances(audio_dirs, mic: int = 1) -> list[Utterance]:
    """Every audio file under the given folders, sorted, with unique utterance ids.

    A folder that does not exist raises FileNotFoundError; duplicate ids (the
    same name in two folders, or a.wav beside a.flac) get a short path hash.
    """
    found: list[Utterance] = []
    for audio_dir in audio_dirs:
        root = Path(audio_dir).expanduser().resolve()
        if root.is_file():
            raise InputError(f"{audio_dir}: is a file, not an audio folder")
        if not root.is_dir():
            raise FileNotFoundError(f"{audio_dir}: audio folder not found")
        for path in _files_under(root):
            if path.suffix.lower() not in AUDIO_EXTENSIONS or path.name.startswith("."):
                continue
            if not path.is_file():
                continue
            utterance = parse_utterance(path, root, mic=mic)
            if utterance is not None:
                found.append(utterance)
    return _make_ids_unique(found)


def _files_under(root: Path) -> list[Path]:
    """Sorted non-folder entries under root, following symlinked folders (a corpus
    assembled from links is common) but entering each real folder once, so link
    loops end. Callers check is_file only on the names they want (no stat per file here)."""
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        files.extend(Path(folder) / name for name in names)
    return sorted(files)


def _make_ids_unique(utterances: list[Utterance]) -> list[Utterance]:
    counts: dict[str, int] = {}
    for utterance in utterances:
        counts[utterance.utterance_id] = counts.get(utterance.utterance_id, 0) + 1
    unique = []
    for utterance in utterances:
        if counts[utterance.utterance_id] > 1:
            tag = f"{zlib.crc32(str(utterance.path).encode()):08x}"
            utterance = Utterance(utterance.path, utterance.speaker_id, f"{utterance.utterance_id}_{tag}")
        unique.append(utterance)
    return unique


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N.

    >>> parse_shard('1/4')
    (1, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise InputError(f"--shard {text!r}: expected I/N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise InputError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def in_shard(utterance: Utterance, shard: tuple[int, int] | None) -> bool:
    """Deterministic split by a hash of the utterance id: adding files to a
    corpus never moves the others to another shard."""
    return id_in_shard(utterance.utterance_id, shard)


def id_in_shard(utterance_id: str, shard: tuple[int, int] | None) -> bool:
    """`in_shard` by utterance id (a cache pickle's file stem)."""
    if shard is None:
        return True
    index, count = shard
    return zlib.crc32(utterance_id.encode()) % count == index
