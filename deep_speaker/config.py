"""One place for every tunable of deep-speaker.

`Config` holds documented defaults; training writes it as JSON beside each
checkpoint and scoring reads it back, so a model never needs its flags again.
Only the standard library is imported here, so every stage can depend on it.

What a checkpoint's config.json holds (`config_version` 2): every training
setting the stage used, and the data settings of the cache it was trained on
(`DATA_FIELDS`: sample rate, trim rule and its parameters, feature settings,
train/test split, speed factors, augmented copies), copied from the training
inputs rather than from the training command's flags, since those are set by
preprocess.py; plus the settings of the stages it started from
(`earlier_stages`). Scoring applies the model's own audio and feature settings
to what it scores, and refuses a cache made with other ones.

A config.json without `config_version` was written before that (version 1):
`Config.load` reads it as it is, fills the fields it lacks with the values that
code used (`LEGACY_V1_DEFAULTS`: batch-norm momentum 0.99, Keras's default then),
and keeps `config_version` 1, which tells its readers that the trim fields are
the defaults rather than a record (every run used them unless `preprocess.py
--trim energy`) and that `speed_perturbations` was not recorded (it is filled in
from `-sp<f>` pseudo-speakers among its `speakers`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deep_speaker.errors import InputError

# Version of the config.json layout; see the module docstring.
CONFIG_VERSION = 2

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
    # Augmented copies (deep_speaker.augmentation): each speaker (and speed-perturbed
    # pseudo-speaker) gets this many noisy/reverberant/band-limited copies "<speaker>-aug<k>"
    # of its training utterances, which training always merges back into the speaker.
    augment_copies: int = 0

    # --- model ---
    model_name: str = "rescnn"  # key of deep_speaker.model.MODEL_BUILDERS
    width: float = 1.0  # filter-count multiplier: 1.0 = paper (64/128/256/512), 0.125 for laptops
    embedding_dim: int = 512  # paper: affine to 512, then L2 normalisation
    clipped_relu_max: float = 20.0  # paper: min(max(x, 0), 20)
    weight_decay: float = 1e-4  # L2 on convolution and dense kernels
    # Weight of the old value in batch norm's moving statistics (PyTorch's default; Keras's
    # 0.99 leaves them a third at their initial values after 100 steps, so a short run scores
    # every held-out window as one class although batch statistics classify it).
    batch_norm_momentum: float = 0.9
    head: str = "softmax"  # softmax head: "softmax" (seed) or "amsoftmax" (cosine, additive margin)
    am_scale: float = 30.0  # AM-softmax logit scale s
    am_margin: float = 0.2  # AM-softmax additive margin m
    # Epochs over which the AM-softmax margin grows linearly from 0 to am_margin: a cosine
    # softmax first, since a full margin from random weights slows early training. 0: no warm-up.
    am_margin_warmup_epochs: int = 0

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
    spec_augment_time_mask: int = 20  # --spec_augment: widest time mask (frames, drawn from 0..this per window)
    spec_augment_freq_mask: int = 8  # --spec_augment: widest frequency mask (filterbanks)
    # What training does with speed-perturbed pseudo-speakers "<speaker>-sp<f>" of the inputs:
    # "classes" keeps each as a speaker of its own (Kaldi's x-vector recipe); "augment"
    # adds their training utterances to their speaker's, as more varied data of one class.
    perturbed_speakers: str = "classes"
    eval_utterances: int = 200  # held-out utterances embedded for the per-epoch EER
    eval_frames: int = 300  # centre crop of each held-out utterance for per-epoch evaluation (frames)
    seed: int = 1234
    strategy: str = "default"  # tf.distribute strategy the stage ran under (train_cli.py --strategy)
    mixed_precision: bool = False  # float16 compute, float32 variables (train_cli.py --mixed_precision)

    # bookkeeping filled by training, not a tunable
    speakers: list[str] = field(default_factory=list)
    stage: str = ""  # training stage that wrote this config ("" outside training)
    # Settings of the stages this one started from, oldest first (each a dict of this
    # class's fields less speakers and earlier_stages), so a triplet checkpoint also
    # tells how its softmax pre-training ran.
    earlier_stages: list = field(default_factory=list)
    config_version: int = CONFIG_VERSION

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
        """Read a config.json (a sidecar that may come from elsewhere): JSON
        object, known fields, right types, sane values; else ConfigError (a
        ValueError) naming the file and the reason. A version-1 file (no
        `config_version`) is upgraded as the module docstring says."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, not a config JSON file")
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or bad UTF-8
            raise ConfigError(f"{path}: not a readable config JSON ({type(error).__name__}: {error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: config JSON must be an object")
        try:
            return cls.from_dict(upgrade_config_values(values)).validate()
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}: {error}") from None

    def validate(self) -> "Config":
        """Check every value lies in its sane range; returns self.

        >>> Config(width=0.125).validate().width
        0.125
        >>> Config(sample_rate_hz=0).validate()
        Traceback (most recent call last):
        ...
        deep_speaker.config.ConfigError: config field 'sample_rate_hz' must lie in 1000..192000, got 0
        """
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name, None)
            if value is not None and not (low <= value <= high):  # also false for NaN
                raise ConfigError(f"config field {name!r} must lie in {low:g}..{high:g}, got {value!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name, choices[0]) not in choices:
                raise ConfigError(f"config field {name!r} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        for factor in self.speed_perturbations:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.5 <= factor <= 2.0:
                raise ConfigError(f"config field 'speed_perturbations' holds {factor!r}; factors lie in 0.5..2")
        if not all(isinstance(name, str) for name in self.speakers):
            raise ConfigError("config field 'speakers' must be a list of strings")
        if not all(isinstance(item, dict) and all(isinstance(k, str) for k in item) for item in self.earlier_stages):
            raise ConfigError("config field 'earlier_stages' must be a list of objects")
        if self.frame_length_samples < 1 or self.frame_shift_samples < 1:
            raise ConfigError("config: frame_length_ms and frame_shift_ms give less than one sample "
                              f"at {self.sample_rate_hz} Hz")
        return self

    def override(self, **overrides: Any) -> "Config":
        """A copy with some fields replaced; unknown names and wrong types are errors.

        >>> Config().override(width=0.25).width
        0.25
        >>> Config().override(widht=0.25)
        Traceback (most recent call last):
        ...
        deep_speaker.config.ConfigError: unknown config field 'widht'
        """
        known = {f.name: f for f in dataclasses.fields(self)}
        checked = {}
        for name, value in overrides.items():
            if name not in known:
                raise ConfigError(f"unknown config field {name!r}")
            checked[name] = _coerce(name, value, type(getattr(self, name)))
        return dataclasses.replace(self, **checked)

    @property
    def frame_length_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.frame_length_ms / 1000))

    @property
    def frame_shift_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.frame_shift_ms / 1000))

    def feature_settings(self) -> dict[str, Any]:
        """The log-fbank settings training inputs and a checkpoint must agree on."""
        return {name: getattr(self, name) for name in FEATURE_FIELDS}

    def audio_settings(self) -> dict[str, Any]:
        """The settings an audio cache is made with (rate, trim rule and its parameters)."""
        return {name: getattr(self, name) for name in AUDIO_FIELDS}

    def data_settings(self) -> dict[str, Any]:
        """Everything preprocess.py decides about the data a model is trained on
        (`DATA_FIELDS`): recorded with the cache and the inputs, copied into the
        checkpoint's config.json.

        >>> sorted(Config().data_settings())[:3]
        ['augment_copies', 'fft_size', 'frame_length_ms']
        """
        return {name: (list(getattr(self, name)) if name == "speed_perturbations" else getattr(self, name))
                for name in DATA_FIELDS}

    def stage_settings(self) -> dict[str, Any]:
        """This config as one entry of a later stage's `earlier_stages`."""
        return {k: v for k, v in self.to_dict().items() if k not in ("speakers", "earlier_stages")}


class ConfigError(InputError):
    """A config (a config.json, or values given to Config) that cannot be used."""


# Seed of which cached utterances a speaker is scored on when it has more than
# --max_utterances, and of the SAP halves (comp_cos.py --seed); not a training setting.
SCORING_SEED = 1234
MAX_CONFIG_BYTES = 1 << 24  # a config.json of a million speakers is still far smaller
# Inclusive bounds of the numeric fields: wide enough for any real setting,
# narrow enough that a corrupt or hostile config.json cannot divide by zero,
# allocate without limit or carry NaN into the features.
_RANGES = {
    "sample_rate_hz": (1000, 192000), "trim_percentile": (0.0, 100.0), "trim_top_db": (0.1, 200.0),
    "min_voice_ms": (0.0, 60000.0), "num_fbanks": (1, 512), "frame_length_ms": (1.0, 1000.0),
    "frame_shift_ms": (1.0, 1000.0), "fft_size": (16, 65536), "preemphasis": (0.0, 1.0),
    "batch_norm_momentum": (0.0, 0.9999), "augment_copies": (0, 100),
    "test_fraction": (0.0, 0.99), "split_seed": (-2 ** 63, 2 ** 63 - 1), "width": (1e-4, 100.0),
    "embedding_dim": (1, 65536), "clipped_relu_max": (1e-6, 1e6), "weight_decay": (0.0, 1.0),
    "am_scale": (1e-3, 1e4), "am_margin": (0.0, 10.0), "am_margin_warmup_epochs": (0, 1_000_000),
    "frames": (1, 10_000_000), "batch_size": (1, 1_000_000),
    "epochs": (0, 1_000_000), "steps_per_epoch": (1, 100_000_000), "lr": (1e-12, 1e6),
    "triplet_margin": (0.0, 1e6), "hard_pool_size": (1, 1_000_000), "hard_refresh_steps": (1, 100_000_000),
    "eval_utterances": (1, 100_000_000), "eval_frames": (1, 10_000_000), "seed": (-2 ** 63, 2 ** 63 - 1),
    "spec_augment_time_mask": (0, 10_000_000), "spec_augment_freq_mask": (0, 512),
    "config_version": (1, CONFIG_VERSION),
}
_CHOICES = {"trim": ("percentile", "energy"), "head": ("softmax", "amsoftmax"),
            "perturbed_speakers": ("classes", "augment"), "strategy": ("default", "mirrored", "multiworker"),
            "stage": ("", "softmax", "triplet", "softmax_frozen"),
            "lr_schedule": ("constant", "cosine"), "negatives": ("hard", "random")}

FEATURE_FIELDS = ("sample_rate_hz", "num_fbanks", "frame_length_ms", "frame_shift_ms", "fft_size", "preemphasis")
# Stage 1 (audio cache): what a cached utterance's samples and voice bounds depend on.
AUDIO_FIELDS = ("sample_rate_hz", "trim", "trim_percentile", "trim_top_db", "min_voice_ms")
# Stage 2 (training inputs), beyond the features: which utterances train, which pseudo-speakers exist.
INPUTS_FIELDS = ("test_fraction", "split_seed", "speed_perturbations", "augment_copies")
DATA_FIELDS = tuple(dict.fromkeys(AUDIO_FIELDS + FEATURE_FIELDS + INPUTS_FIELDS))

# What a version-1 config.json (no config_version) lacks, as that code ran: batch norm
# kept Keras's momentum 0.99 before the field existed.
LEGACY_V1_DEFAULTS = {"batch_norm_momentum": 0.99}


def upgrade_config_values(values: dict[str, Any]) -> dict[str, Any]:
    """The fields of a config.json brought to the current layout (see the module
    docstring): a version-1 file keeps version 1 and gets `LEGACY_V1_DEFAULTS` for
    the fields it lacks, and its unrecorded speed factors from its speakers.

    >>> upgrade_config_values({"speakers": ["a", "a-sp0.9", "b-sp1.1"]})["speed_perturbations"]
    [0.9, 1.1]
    >>> upgrade_config_values({})["batch_norm_momentum"], upgrade_config_values({})["config_version"]
    (0.99, 1)
    """
    if "config_version" in values:
        return dict(values)
    from deep_speaker.corpus import split_pseudo_speaker_id

    upgraded = {**LEGACY_V1_DEFAULTS, **values, "config_version": 1}
    speakers = values.get("speakers")
    if not values.get("speed_perturbations") and isinstance(speakers, list):
        factors = {split_pseudo_speaker_id(name)[1] for name in speakers if isinstance(name, str)}
        upgraded["speed_perturbations"] = sorted(f for f in factors if f != 1.0)
    return upgraded


def _coerce(name: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config field {name!r} must be {expected.__name__}, got {value!r}")
    return value
