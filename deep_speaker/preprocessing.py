"""Stages 1 and 2 as one call: what `preprocess.py` and the pipeline both run.

`preprocess()` caches the audio (`deep_speaker.audio_cache`), builds the
training inputs (`deep_speaker.training_inputs`) and packs the feature store
training reads (`deep_speaker.feature_store`), holding the cache's lock across
both stages when it runs both, so no other run slips in between them. It
reports each stage's summary line through `report` and raises PreprocessError
when a stage produced nothing at all (every file or speaker failed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from deep_speaker.config import Config
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


def trim_setting(cache_dir: str | Path, trim: str | None, cache_mode: str | None) -> dict:
    """{'trim': ...} for the Config of a run: `trim` when given, else the rule a
    cache being updated records (so updating an energy-trimmed cache keeps it
    energy-trimmed), else nothing (the default). With the training inputs alone
    the inputs always take the cache's settings, so a `trim` that differs from
    them is refused."""
    from deep_speaker.audio_cache import audio_cache_dir, read_audio_settings

    cache_exists = audio_cache_dir(cache_dir).is_dir()
    if trim is not None:
        if cache_exists and cache_mode is None:
            recorded, known = read_audio_settings(cache_dir)
            if known and recorded["trim"] != trim:
                raise PreprocessError(f"--trim {trim}: the cache in {cache_dir} was trimmed with "
                                      f"--trim {recorded['trim']}, and the training inputs take the cache's "
                                      f"settings; rebuild the cache with --regenerate_full_cache --trim {trim}")
        return {"trim": trim}
    if cache_exists and cache_mode != "regenerate":
        return {"trim": read_audio_settings(cache_dir)[0]["trim"]}
    return {}


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
    if cache_mode is not None and generate_inputs:  # hold the cache for both stages
        with cache_lock(cache_dir, timeout=lock_timeout, purpose="preprocess"):
            _stages(cache_dir, config, cache_mode, audio_dirs, generate_inputs, unseen_speakers, workers, shard,
                    mic, lock_timeout, store_shard_mb, report)
    else:
        _stages(cache_dir, config, cache_mode, audio_dirs, generate_inputs, unseen_speakers, workers, shard, mic,
                lock_timeout, store_shard_mb, report)


def _stages(cache_dir, config, cache_mode, audio_dirs, generate_inputs, unseen_speakers, workers, shard, mic,
            lock_timeout, store_shard_mb, report) -> None:
    from deep_speaker.audio_cache import build_audio_cache, failures_path
    from deep_speaker.feature_store import DEFAULT_SHARD_MB, pack_store
    from deep_speaker.training_inputs import generate_training_inputs

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
        report(pack_store(cache_dir, config, max_shard_mb=store_shard_mb or DEFAULT_SHARD_MB,
                          lock_timeout=lock_timeout).line())
