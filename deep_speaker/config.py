"""One place for every tunable of deep-speaker.

`Config` holds documented defaults; training writes it as JSON beside each
checkpoint and scoring reads it back, so a model never needs its flags again.
Only the standard library is imported here, so every stage can depend on it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Config:
    # --- audio (stage 1: audio cache) ---
    sample_rate_hz: int = 8000  # the seed resamples VCTK's 48 kHz to 8 kHz
    trim: str = "percentile"  # "percentile" (the seed's rule) or "energy" (librosa-style)
    trim_percentile: float = 95.0  # seed: voice = first..last sample above the 95th pct of |x|
    trim_top_db: float = 40.0  # energy trim: frames quieter than peak - top_db are silence
    min_voice_ms: float = 100.0  # utterances with less voice than this are rejected (ms)

    # --- features (stage 2: training inputs) ---
    num_fbanks: int = 64  # paper: 64-d log mel filterbank
    frame_length_ms: float = 25.0  # analysis window (ms)
    frame_shift_ms: float = 10.0  # hop (ms)
    fft_size: int = 512  # FFT points (zero-padded window)
    preemphasis: float = 0.97  # python_speech_features' default
    test_fraction: float = 0.2  # share of each speaker's utterances kept for testing
    split_seed: int = 1234  # seed of the train/test split of utterances
    # Speed perturbation (Ko et al. 2015): each factor f adds a pseudo-speaker
    # "<speaker>-sp<f>" whose audio plays f times faster (pitch shifts too), e.g. [0.9, 1.1].
    speed_perturbations: list = field(default_factory=list)

    # --- model ---
    model_name: str = "rescnn"  # key of deep_speaker.model.MODEL_BUILDERS
    width: float = 1.0  # filter-count multiplier: 1.0 = paper (64/128/256/512), 0.125 for laptops
    embedding_dim: int = 512  # paper: affine to 512, then L2 normalisation
    clipped_relu_max: float = 20.0  # paper: min(max(x, 0), 20)
    weight_decay: float = 1e-4  # L2 on convolution and dense kernels
    head: str = "softmax"  # softmax head: "softmax" (seed) or "amsoftmax" (cosine, additive margin)
    am_scale: float = 30.0  # AM-softmax logit scale s
    am_margin: float = 0.2  # AM-softmax additive margin m

    # --- training ---
    frames: int = 160  # training window length (frames of 10 ms)
    batch_size: int = 64  # windows per step (softmax) / triplets per step (embeddings)
    epochs: int = 20
    steps_per_epoch: int = 200
    lr: float = 1e-3  # Adam learning rate
    lr_schedule: str = "constant"  # "constant" or "cosine" (decays to 1 % of lr over epochs * steps_per_epoch)
    triplet_margin: float = 0.1  # alpha of the cosine triplet loss (seed's ResCNN version)
    negatives: str = "hard"  # "hard" (closest in a scored pool) or "random" (seed)
    hard_pool_size: int = 8  # candidate negatives scored per anchor for hard mining
    hard_refresh_steps: int = 50  # steps between refreshes of the embedding bank used for mining
    spec_augment: bool = False  # time/frequency masking of training windows
    eval_utterances: int = 200  # held-out utterances embedded for the per-epoch EER
    eval_frames: int = 300  # centre crop of each held-out utterance for per-epoch evaluation (frames)
    seed: int = 1234

    # bookkeeping filled by training, not a tunable
    speakers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from deep_speaker.io_utils import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        return cls().override(**values)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable config JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: config JSON must be an object")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def override(self, **overrides: Any) -> "Config":
        """A copy with some fields replaced; unknown names and wrong types are errors.

        >>> Config().override(width=0.25).width
        0.25
        >>> Config().override(widht=0.25)
        Traceback (most recent call last):
        ...
        ValueError: unknown config field 'widht'
        """
        known = {f.name: f for f in dataclasses.fields(self)}
        checked = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown config field {name!r}")
            checked[name] = _coerce(name, value, type(getattr(self, name)))
        return dataclasses.replace(self, **checked)

    @property
    def frame_length_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.frame_length_ms / 1000))

    @property
    def frame_shift_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.frame_shift_ms / 1000))

    def feature_settings(self) -> dict[str, Any]:
        """The settings a cache and a checkpoint must agree on."""
        return {name: getattr(self, name) for name in FEATURE_FIELDS}


FEATURE_FIELDS = ("sample_rate_hz", "num_fbanks", "frame_length_ms", "frame_shift_ms", "fft_size", "preemphasis")


def _coerce(name: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"config field {name!r} must be {expected.__name__}, got {value!r}")
    return value
