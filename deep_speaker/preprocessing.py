"""Stages 1 and 2 as one call: what `preprocess.py` and the pipeline both run.

`preprocess()` caches the audio (`deep_speaker.audio_cache`), builds the
training inputs (`deep_speaker.training_inputs`) and packs the feature store
training reads (`deep_speaker.feature_store`), holding the cache's lock across
both stages when it runs both, so no other run slips in between them. It
reports each stage's summary line through `report` and raises PreprocessError
when a stage produced nothing at all (every file or speaker failed).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Mapping

from deep_speaker.config import AUDIO_FIELDS, FEATURE_FIELDS, Config
from deep_speaker.errors import InputError

CACHE_MODES = ("regenerate", "update")  # --regenerate_full_cache, --update_cache


class PreprocessError(InputError):
    """A preprocessing request that cannot be served, or a stage that produced nothing."""


def default_audio_dirs(data_root: str | Path) -> list[str]:
    """The seed's corpus, DATA_ROOT/VCTK-Corpus, plus DATA_ROOT/samples when present."""
    data_root = Path(data_root)
    dirs = [data_root / "VCTK-Corpus"]
    if not dirs[0].is_dir():
        raise PreprocessError(f"{dirs[0]}: corpus not found; pass --audio_dir DIR or download VCTK "
                              f"(python scripts/download_vctk.py)")
    if (data_root / "samples").is_dir():
        dirs.append(data_root / "samples")
    return [str(d) for d in dirs]


def audio_settings_of_run(cache_dir: str | Path, given: Mapping[str, Any], cache_mode: str | None) -> dict:
    """The audio settings (`AUDIO_FIELDS`: rate, trim rule and its parameters,
    minimum voice) for the Config of a run, from `given` (the audio flags given,
    by field; None or absent: not given).

    A new cache, or one being regenerated, takes the given ones over Config's
    defaults. An update, or the training inputs alone, of a cache take the
    settings it records (so updating an energy-trimmed 16 kHz cache keeps it
    energy-trimmed at 16 kHz): a given setting that differs from them is refused
    in one line naming the cache and the setting, since an update adds files
    made with the cache's settings and the inputs always take them. A cache made
    before settings were recorded gives what it can tell (its rate), under the
    given ones.

    >>> audio_settings_of_run('/nonexistent', {'trim': 'energy', 'sample_rate_hz': None}, 'regenerate')
    {'trim': 'energy'}
    """
    from deep_speaker.audio_cache import audio_cache_dir, read_audio_settings

    given = {name: value for name, value in given.items() if value is not None}
    if unknown := sorted(set(given) - set(AUDIO_FIELDS)):
        raise ValueError(f"not audio settings: {', '.join(unknown)}")
    if cache_mode == "regenerate" or not audio_cache_dir(cache_dir).is_dir():
        return given
    recorded, known = read_audio_settings(cache_dir)
    different = [name for name in AUDIO_FIELDS if known and name in given and given[name] != recorded[name]]
    if different:
        why = ("an update adds files made with the cache's settings" if cache_mode == "update"
               else "the training inputs take the cache's settings")
        flags = " ".join(f"--{name} {given[name]}" for name in different)
        raise PreprocessError(
            f"{audio_cache_dir(cache_dir)} was cached with other settings "
            f"({'; '.join(f'{name}: {recorded[name]!r} vs {given[name]!r}' for name in different)}, cache vs "
            f"flags), and {why}: leave out {', '.join('--' + name for name in different)}, or rebuild the cache "
            f"with --regenerate_full_cache {flags}")
    return {**recorded, **given}


def preprocess(cache_dir: str | Path, config: Config, *, cache_mode: str | None = None, audio_dirs=None,
               generate_inputs: bool = False, unseen_speakers=None, workers: int = 1,
               shard: tuple[int, int] | None = None, mic: int = 1, lock_timeout: float | None = None,
               store_shard_mb: float | None = None, report: Callable[[str], None] = print) -> None:
    """Run stage 1 (`cache_mode` "regenerate" or "update", over `audio_dirs`)
    and/or stage 2 (`generate_inputs`, then the feature store). Each stage
    resumes what a killed run left and skips what is up to date."""
    from deep_speaker.locking import cache_lock

    if cache_mode not in (None, *CACHE_MODES):
        raise PreprocessError(f"unknown cache mode {cache_mode!r}; choose one of {', '.join(CACHE_MODES)}")
    if cache_mode is None and not generate_inputs:
        raise PreprocessError("nothing to do: choose a cache mode and/or the training inputs")
    if cache_mode is not None and not audio_dirs:
        raise PreprocessError("the audio cache needs at least one corpus folder")
    if shard is not None and generate_inputs:
        raise PreprocessError("--shard splits the audio cache only; run --generate_training_inputs once, unsharded")
    # Both stages: hold the cache across them, so no other run slips in between (each stage takes the lock too).
    both = cache_mode is not None and generate_inputs
    with cache_lock(cache_dir, timeout=lock_timeout, purpose="preprocess") if both else contextlib.nullcontext():
        _stages(cache_dir, config, cache_mode, audio_dirs, generate_inputs, unseen_speakers, workers, shard, mic,
                lock_timeout, store_shard_mb, report)


def _stages(cache_dir, config, cache_mode, audio_dirs, generate_inputs, unseen_speakers, workers, shard, mic,
            lock_timeout, store_shard_mb, report) -> None:
    from deep_speaker.audio_cache import build_audio_cache, failures_path
    from deep_speaker.feature_store import DEFAULT_SHARD_MB, pack_store
    from deep_speaker.training_inputs import generate_training_inputs, read_inputs_settings

    if cache_mode is not None:
        summary = build_audio_cache(audio_dirs, cache_dir, config, regenerate=cache_mode == "regenerate",
                                    workers=workers, shard=shard, mic=mic, lock_timeout=lock_timeout)
        report(summary.line())
        if summary.failed:
            report(f"failures listed in {failures_path(cache_dir, shard)}")
        if summary.cached == 0 and summary.skipped == 0:
            raise PreprocessError(f"nothing could be cached: every file failed (see {failures_path(cache_dir, shard)})")
    if generate_inputs:
        summary = generate_training_inputs(cache_dir, config, unseen_speakers=unseen_speakers, workers=workers,
                                           lock_timeout=lock_timeout)
        report(summary.line())
        if summary.written == 0 and summary.skipped == 0:
            raise PreprocessError("no speaker's training inputs could be written (see inputs_failures.tsv)")
        # Packed with the feature settings the inputs record: the cache's audio settings, whatever `config` said.
        recorded = read_inputs_settings(cache_dir)
        packing = config.override(**{k: recorded[k] for k in FEATURE_FIELDS}) if recorded is not None else config
        report(pack_store(cache_dir, packing, max_shard_mb=store_shard_mb or DEFAULT_SHARD_MB,
                          lock_timeout=lock_timeout).line())
