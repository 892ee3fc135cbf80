"""One place for every tunable of deep-speaker.

`Config` holds documented defaults; training writes it as JSON beside each
checkpoint and scoring reads it back, so a model never needs its flags again.
Only the standard library is imported here, so every stage can depend on it.
Each field is declared once, with `setting`: its default, the help text of its
command-line flag, and its bounds or choices, which `Config.validate` checks and
from which deep_speaker.commands.config_flags makes the flags of train_cli.py
and preprocess.py (and reads train_cli.py --config FILE).

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


def setting(default: Any, help: str, *, bounds: tuple | None = None, choices: tuple | None = None,
            item_bounds: tuple | None = None) -> Any:
    """A field of `Config` with everything said about it once: its default, the
    help text of its command-line flag, and where they apply its inclusive
    `bounds` (numbers), its `choices` (strings) or the bounds of each item
    (`item_bounds`, lists). `Config.validate` and the flags of the commands
    (deep_speaker.commands.config_flags) both read them from here."""
    metadata = {"help": help}
    for key, value in (("bounds", bounds), ("choices", choices), ("item_bounds", item_bounds)):
        if value is not None:
            metadata[key] = tuple(value)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# Inclusive bounds are wide enough for any real setting, narrow enough that a
# corrupt or hostile config.json cannot divide by zero, allocate without limit or
# carry NaN into the features.
_ANY_INT64 = (-2 ** 63, 2 ** 63 - 1)


@dataclass
class Config:
    # --- audio (stage 1: audio cache) ---
    sample_rate_hz: int = setting(8000, "sample rate of the audio cache and the features (Hz); the seed resamples "
                                        "VCTK's 48 kHz to 8 kHz", bounds=(1000, 192000))
    trim: str = setting("percentile", "silence trim of the audio cache: the seed's rule (voice from the first to the "
                                      "last sample above the trim_percentile-th percentile of |x|) or frame energy "
                                      "like librosa", choices=("percentile", "energy"))
    trim_percentile: float = setting(95.0, "percentile trim: voice runs from the first to the last sample above this "
                                           "percentile of |x|", bounds=(0.0, 100.0))
    trim_top_db: float = setting(40.0, "energy trim: frames quieter than the peak minus this many dB are silence",
                                 bounds=(0.1, 200.0))
    min_voice_ms: float = setting(100.0, "utterances with less voice than this (ms) are rejected",
                                  bounds=(0.0, 60000.0))

    # --- features (stage 2: training inputs) ---
    num_fbanks: int = setting(64, "log mel filterbank bands per frame (paper: 64)", bounds=(1, 512))
    frame_length_ms: float = setting(25.0, "analysis window (ms)", bounds=(1.0, 1000.0))
    frame_shift_ms: float = setting(10.0, "hop between frames (ms)", bounds=(1.0, 1000.0))
    fft_size: int = setting(512, "FFT points (the window zero-padded to this)", bounds=(16, 65536))
    preemphasis: float = setting(0.97, "pre-emphasis coefficient (python_speech_features' default)",
                                 bounds=(0.0, 1.0))
    test_fraction: float = setting(0.2, "share of each speaker's utterances kept for testing", bounds=(0.0, 0.99))
    split_seed: int = setting(1234, "seed of the train/test split of utterances", bounds=_ANY_INT64)
    # Speed perturbation (Ko et al. 2015): each factor f adds a pseudo-speaker
    # "<speaker>-sp<f>" whose audio plays f times faster (pitch shifts too), e.g. [0.9, 1.1].
    speed_perturbations: list = setting([], "speed factors F, each adding speed-perturbed pseudo-speakers "
                                            "<speaker>-sp<F> to the training inputs (audio played F times faster, "
                                            "pitch shifted too), e.g. 0.9,1.1", item_bounds=(0.5, 2.0))
    # Augmented copies (deep_speaker.augmentation): each speaker (and speed-perturbed
    # pseudo-speaker) gets this many noisy/reverberant/band-limited copies "<speaker>-aug<k>"
    # of its training utterances, which training always merges back into the speaker.
    augment_copies: int = setting(0, "noisy/reverberant/band-limited copies <speaker>-aug<K> of each speaker's "
                                     "training utterances in the training inputs (merged back into the speaker by "
                                     "training)", bounds=(0, 100))

    # --- model ---
    model_name: str = setting("rescnn", "architecture: a key of deep_speaker.model.MODEL_BUILDERS")
    width: float = setting(1.0, "filter-count multiplier: 1.0 = paper (64/128/256/512 filters, ~24 M parameters), "
                                "0.125 for laptops and tests", bounds=(1e-4, 100.0))
    embedding_dim: int = setting(512, "embedding size (paper: affine to 512, then L2 normalisation)",
                                 bounds=(1, 65536))
    # The paper averages the last stage's frames over time; statistics pooling also keeps their
    # spread (x-vectors, WeSpeaker's ResNets). The default is the paper's, which every model
    # trained before the field existed used.
    pooling: str = setting("average", "how the ResCNN pools its frames into one vector: average (paper: temporal "
                                      "average) or statistics (mean and standard deviation over time, "
                                      "concatenated)", choices=("average", "statistics"))
    clipped_relu_max: float = setting(20.0, "ceiling of the clipped ReLU (paper: min(max(x, 0), 20))",
                                      bounds=(1e-6, 1e6))
    weight_decay: float = setting(1e-4, "L2 penalty on convolution and dense kernels", bounds=(0.0, 1.0))
    # Weight of the old value in batch norm's moving statistics (PyTorch's default; Keras's
    # 0.99 leaves them a third at their initial values after 100 steps, so a short run scores
    # every held-out window as one class although batch statistics classify it).
    batch_norm_momentum: float = setting(0.9, "weight of the old value in batch norm's moving statistics "
                                              "(PyTorch's 0.9; Keras's 0.99 leaves them near their initial values "
                                              "after a short run)", bounds=(0.0, 0.9999))
    head: str = setting("softmax", "speaker head of softmax stages: plain softmax (seed) or amsoftmax, a cosine "
                                   "softmax with an additive margin", choices=("softmax", "amsoftmax"))
    am_scale: float = setting(30.0, "--head amsoftmax: logit scale s", bounds=(1e-3, 1e4))
    am_margin: float = setting(0.2, "--head amsoftmax: additive margin m", bounds=(0.0, 10.0))
    # Epochs over which the AM-softmax margin grows linearly from 0 to am_margin: a cosine
    # softmax first, since a full margin from random weights slows early training. 0: no warm-up.
    am_margin_warmup_epochs: int = setting(0, "--head amsoftmax: epochs over which the margin grows linearly from 0 "
                                              "to am_margin (0: the full margin from the start)",
                                           bounds=(0, 1_000_000))

    # --- training ---
    frames: int = setting(160, "training window length (frames, of frame_shift_ms each)",
                          bounds=(1, 10_000_000))
    batch_size: int = setting(64, "windows per step (softmax) or triplets per step (embeddings), over all replicas",
                              bounds=(1, 1_000_000))
    epochs: int = setting(20, "epochs of the stage", bounds=(1, 1_000_000))
    steps_per_epoch: int = setting(200, "training steps per epoch", bounds=(1, 100_000_000))
    lr: float = setting(1e-3, "Adam learning rate", bounds=(1e-12, 1e6))
    lr_schedule: str = setting("constant", "learning-rate schedule over the stage: constant, or cosine decay to 1 % "
                                           "of lr over epochs x steps_per_epoch", choices=("constant", "cosine"))
    triplet_margin: float = setting(0.1, "alpha of the cosine triplet loss (the seed's ResCNN version)",
                                    bounds=(0.0, 1e6))
    negatives: str = setting("hard", "triplet negatives: the most similar of a scored pool of speakers (hard), or "
                                     "random (seed)", choices=("hard", "random"))
    hard_pool_size: int = setting(8, "--negatives hard: candidate negatives scored per anchor",
                                  bounds=(1, 1_000_000))
    hard_refresh_steps: int = setting(50, "--negatives hard: steps between refreshes of the embedding bank the "
                                          "negatives are mined from", bounds=(1, 100_000_000))
    spec_augment: bool = setting(False, "time and frequency masking of training windows (SpecAugment)")
    spec_augment_time_mask: int = setting(20, "--spec_augment: widest time mask (frames; each window's is drawn "
                                              "from 0..this)", bounds=(0, 10_000_000))
    spec_augment_freq_mask: int = setting(8, "--spec_augment: widest frequency mask (filterbanks)", bounds=(0, 512))
    # Scoring normalises each file over its own frames, training windows were normalised over
    # their whole utterance: a file shorter than a few seconds then gives the model statistics
    # it never saw. Re-normalising some windows over themselves (as SpeechBrain's recipes
    # normalise each training chunk) teaches it both. Per-band CMVN ignores any earlier
    # per-band affine map, so this equals CMVN of the window's raw filterbanks.
    window_cmvn: float = setting(0.0, "share of training windows normalised over their own frames (per-window "
                                      "CMVN, as a file as short as a window is scored) instead of over their "
                                      "whole utterance", bounds=(0.0, 1.0))
    # What training does with speed-perturbed pseudo-speakers "<speaker>-sp<f>" of the inputs:
    # "classes" keeps each as a speaker of its own (Kaldi's x-vector recipe); "augment"
    # adds their training utterances to their speaker's, as more varied data of one class.
    perturbed_speakers: str = setting("classes", "speed-perturbed pseudo-speakers <speaker>-sp<F> in the inputs: "
                                                 "speakers of their own (classes) or more training data of their "
                                                 "speaker (augment)", choices=("classes", "augment"))
    eval_utterances: int = setting(200, "held-out utterances embedded for each epoch's verification EER",
                                   bounds=(1, 100_000_000))
    eval_frames: int = setting(300, "centre crop of each held-out utterance for the per-epoch evaluation (frames)",
                               bounds=(1, 10_000_000))
    seed: int = setting(1234, "seed of initialisation and batches", bounds=_ANY_INT64)
    strategy: str = setting("default", "tf.distribute strategy the stage ran under (train_cli.py --strategy)",
                            choices=("default", "mirrored", "multiworker"))
    mixed_precision: bool = setting(False, "float16 compute, float32 variables (train_cli.py --mixed_precision)")

    # bookkeeping filled by training, not a tunable (BOOKKEEPING_FIELDS)
    speakers: list[str] = setting([], "the speakers of the inputs the stage trained on (filled by training)")
    stage: str = setting("", "training stage that wrote this config (\"\" outside training)",
                         choices=("", "softmax", "triplet", "softmax_frozen"))
    # Settings of the stages this one started from, oldest first (each a dict of this
    # class's fields less speakers and earlier_stages), so a triplet checkpoint also
    # tells how its softmax pre-training ran.
    earlier_stages: list = setting([], "settings of the stages this one started from, oldest first")
    config_version: int = setting(CONFIG_VERSION, "layout of config.json (module docstring)",
                                  bounds=(1, CONFIG_VERSION))

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
        values = read_config_object(path)
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
        for name, (low, high) in _ITEM_RANGES.items():  # speed_perturbations: "factors lie in 0.5..2"
            for item in getattr(self, name):
                if isinstance(item, bool) or not isinstance(item, (int, float)) or not low <= item <= high:
                    raise ConfigError(f"config field {name!r} holds {item!r}; factors lie in {low:g}..{high:g}")
        if not all(isinstance(name, str) for name in self.speakers):
            raise ConfigError("config field 'speakers' must be a list of strings")
        if not all(isinstance(item, dict) and all(isinstance(k, str) for k in item) for item in self.earlier_stages):
            raise ConfigError("config field 'earlier_stages' must be a list of objects")
        if self.frame_length_samples < 1 or self.frame_shift_samples < 1:
            raise ConfigError("config: frame_length_ms and frame_shift_ms give less than one sample "
                              f"at {self.sample_rate_hz} Hz")
        return self

    def check_frame_fits_fft(self) -> "Config":
        """Refuse features whose FFT is shorter than a frame (python_speech_features
        would cut every frame short, with only a log warning); returns self. Checked
        where features are made (stage 2), not in `validate`, so a cache can be
        built at a high rate before the inputs' --fft_size is chosen.

        >>> Config(sample_rate_hz=48000).check_frame_fits_fft()
        Traceback (most recent call last):
        ...
        deep_speaker.config.ConfigError: config: fft_size 512 is shorter than a 25 ms frame at 48000 Hz (1200 samples); set fft_size to at least 1200, e.g. 2048
        """
        if self.fft_size < self.frame_length_samples:  # the FFT would cut the window short
            raise ConfigError(f"config: fft_size {self.fft_size} is shorter than a {self.frame_length_ms:g} ms frame "
                              f"at {self.sample_rate_hz} Hz ({self.frame_length_samples} samples); set fft_size to "
                              f"at least {self.frame_length_samples}, e.g. "
                              f"{1 << (self.frame_length_samples - 1).bit_length()}")
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
# Environment of scoring: scoring commands run each utterance once, at its own length. TensorFlow's oneDNN
# convolutions set up a primitive per new input shape (about 45 ms per length at
# width 1.0), so they run slower cold than its own (Eigen) convolutions, which are as
# fast warm for one utterance at a time (bench/score.py). A value the user set wins.
SCORING_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "0"}
MAX_CONFIG_BYTES = 1 << 24  # a config.json of a million speakers is still far smaller
# Inclusive bounds of the numeric fields, and the values a string field may take
# (see `setting`), as `validate` and the commands' flags check them.
_RANGES = {f.name: f.metadata["bounds"] for f in dataclasses.fields(Config) if "bounds" in f.metadata}
_CHOICES = {f.name: f.metadata["choices"] for f in dataclasses.fields(Config) if "choices" in f.metadata}
_ITEM_RANGES = {f.name: f.metadata["item_bounds"] for f in dataclasses.fields(Config) if "item_bounds" in f.metadata}

FEATURE_FIELDS = ("sample_rate_hz", "num_fbanks", "frame_length_ms", "frame_shift_ms", "fft_size", "preemphasis")
# Stage 1 (audio cache): what a cached utterance's samples and voice bounds depend on.
AUDIO_FIELDS = ("sample_rate_hz", "trim", "trim_percentile", "trim_top_db", "min_voice_ms")
# Stage 2 (training inputs), beyond the features: which utterances train, which pseudo-speakers exist.
INPUTS_FIELDS = ("test_fraction", "split_seed", "speed_perturbations", "augment_copies")
DATA_FIELDS = tuple(dict.fromkeys(AUDIO_FIELDS + FEATURE_FIELDS + INPUTS_FIELDS))
# What training fills in or takes from its own flags (train_cli.py --strategy, --mixed_precision),
# not settings to train with: a checkpoint's config.json holds them, a recipe does not.
BOOKKEEPING_FIELDS = ("speakers", "stage", "earlier_stages", "config_version", "strategy", "mixed_precision")

# What a version-1 config.json (no config_version) lacks, as that code ran: batch norm
# kept Keras's momentum 0.99 before the field existed.
LEGACY_V1_DEFAULTS = {"batch_norm_momentum": 0.99}


def read_config_object(path: str | Path) -> dict[str, Any]:
    """The JSON object a config file holds, not yet checked field by field; a
    folder, an unreadable or oversized file, bad JSON or another JSON value is a
    ConfigError naming the file."""
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
    return values


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
