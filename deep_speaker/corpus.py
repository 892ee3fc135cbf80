"""Find the utterances of a corpus and name them: the one place where speaker
and utterance ids are parsed from paths.

Layouts (speaker = folder, as in the seed):
- VCTK 0.80: ``wav48/p225/p225_001.wav``
- VCTK 0.92: ``wav48_silence_trimmed/p225/p225_001_mic1.flac`` (mic 1 unless asked)
- LibriSpeech: ``<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``
- any folder-per-speaker tree: ``<root>/<Name>/**/*.wav|flac|ogg|mp3``; files lying
  directly in the root belong to a speaker named after the root folder.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

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


def discover_utterances(audio_dirs, mic: int = 1) -> list[Utterance]:
    """Every audio file under the given folders, sorted, with unique utterance ids.

    A folder that does not exist raises FileNotFoundError; duplicate ids (the
    same name in two folders, or a.wav beside a.flac) get a short path hash.
    """
    found: list[Utterance] = []
    for audio_dir in audio_dirs:
        root = Path(audio_dir).expanduser().resolve()
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
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N")
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
