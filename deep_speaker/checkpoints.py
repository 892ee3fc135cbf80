"""Checkpoints: the folder layout, the order a model is looked up in, and loading one.

Owns, in one place:

- the training stages and their order (`STAGES`, `EARLIER_STAGE`: the stage
  whose best model each one starts from);
- a stage's folder ``<checkpoint_dir>/<stage>/`` (`StageFolder`): ``last.keras``
  and ``last_optimizer.npz`` after every epoch, ``best.keras`` (`MODEL_FILE`),
  ``config.json`` (`CONFIG_FILE`, the Config it trained with), ``state.json``
  (the last recorded epoch, read and written here), ``history.csv``,
  ``training_curves.png`` and ``tensorboard/``;
- which model a command uses (`resolve_model`): ``--checkpoint FILE``, else the
  best model of the first stage of `LOOKUP_ORDER` that ``--checkpoint_dir``
  holds, else the pretrained model shipped in the package (`PRETRAINED_DIR`);
  every model file has its config.json beside it (`config_beside`);
- loading a model for embedding (`load_embedding_model`).

Only the standard library and the light config and errors modules are imported
here: TensorFlow is imported when a model is loaded, not before, so a command's
``--help`` never loads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from deep_speaker.config import Config
from deep_speaker.errors import InputError

STAGES = ("softmax", "triplet", "softmax_frozen")  # the order they train in
EARLIER_STAGE = {"triplet": "softmax", "softmax_frozen": "triplet"}  # the stage each one starts from
# The stage whose best model scoring takes from a --checkpoint_dir holding several:
# the triplet embeddings (softmax_frozen only trains a head on them, frozen), then
# softmax_frozen (its triplet folder gone), then softmax pre-training alone.
LOOKUP_ORDER = ("triplet", "softmax_frozen", "softmax")
MODEL_FILE = "best.keras"  # a stage's best model: what scoring and the next stage use
CONFIG_FILE = "config.json"  # beside every model file: the Config it was trained with
EMBEDDING_FILE = "embedding.keras"  # an embedding model alone: the pretrained model, an export
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
WORKERS_DIR = "workers"  # <stage>/workers/<task id>/: a non-chief multi-worker task's own files, never read


class CheckpointError(InputError):
    """A model or checkpoint file that cannot be used: missing, not loadable
    safely, not an embedding model its config.json describes, a damaged state file."""


PRETRAINED_NAME = "pretrained"  # train_cli.py's --start_from / --config word for PRETRAINED_DIR


def pretrained_model() -> Path:
    """The pretrained model shipped in the package (it may be missing from a checkout)."""
    return PRETRAINED_DIR / EMBEDDING_FILE


def model_folder(name_or_path: str | Path) -> Path:
    """A folder given on the command line: PRETRAINED_DIR for the word
    "pretrained" (`PRETRAINED_NAME`), else the path itself."""
    return PRETRAINED_DIR if str(name_or_path) == PRETRAINED_NAME else Path(name_or_path)


class StageFolder:
    """Files of one stage's checkpoint folder."""

    def __init__(self, path: Path):
        self.path = path
        self.last = path / "last.keras"
        self.last_optimizer = path / "last_optimizer.npz"
        self.best = path / MODEL_FILE
        self.config = path / CONFIG_FILE
        self.state = path / "state.json"
        self.history = path / "history.csv"
        self.curves = path / "training_curves.png"
        self.tensorboard = path / "tensorboard"

    @classmethod
    def of(cls, checkpoint_dir: str | Path, stage: str, worker: int | None = None) -> "StageFolder":
        """The folder of `stage` in `checkpoint_dir`; with `worker`, that
        multi-worker task's own folder inside it (only the chief writes the stage's)."""
        path = Path(checkpoint_dir) / stage
        return cls(path if worker is None else path / WORKERS_DIR / str(worker))

    def read_state(self) -> dict | None:
        if not self.state.exists():
            return None
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or bad UTF-8
            raise CheckpointError(f"{self.state}: corrupt state file ({type(error).__name__}: {error}); "
                                  f"rerun with --restart") from None
        epoch = state.get("epoch") if isinstance(state, dict) else None
        best = state.get("best", {}) if isinstance(state, dict) else None
        if (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or not isinstance(best, dict)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in best.values())):
            raise CheckpointError(f"{self.state}: not a training state file; rerun with --restart")
        return state

    def write_state(self, state: dict) -> None:
        from deep_speaker.io_utils import atomic_write_text

        atomic_write_text(self.state, json.dumps(state, indent=2, sort_keys=True))

    def uncommitted(self, epoch: int) -> dict[Path, Path]:
        """Checkpoint files of `epoch` written before state.json records it,
        each with the name it takes once it does."""
        return {self.path / f".uncommitted.epoch{epoch}.{final.name}": final
                for final in (self.last, self.last_optimizer, self.best)}

    def commit(self, epoch: int) -> None:
        """Give the files of `epoch` (the one state.json records) their final
        names and drop those of any later epoch, so a run killed after writing
        an epoch's files but before recording it resumes from the recorded one."""
        for uncommitted, final in self.uncommitted(epoch).items():
            if uncommitted.exists():
                os.replace(uncommitted, final)
        for stale in self.path.glob(".uncommitted.epoch*"):
            stale.unlink(missing_ok=True)


@dataclass
class ResolvedModel:
    path: Path
    config: Config
    origin: str  # "--checkpoint", "best triplet checkpoint", "pretrained model shipped with deep-speaker", ...

    def line(self, runtime: str | None = None) -> str:
        """What a command prints first: which model, from where; with `runtime`, what runs it."""
        return f"model: {self.path} ({self.origin}, width {self.config.width}{f', runtime {runtime}' if runtime else ''})"


def resolve_model(checkpoint: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> ResolvedModel:
    """--checkpoint FILE, else the best model of the first stage of
    `LOOKUP_ORDER` in --checkpoint_dir, else the pretrained model in the package;
    never a silent fallback from a --checkpoint that is not there."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file (pass its {MODEL_FILE}, or the "
                                  f"folder above its stages as --checkpoint_dir)")
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return ResolvedModel(path, config_beside(path), "--checkpoint")
    candidates = []
    if checkpoint_dir is not None:
        for stage in LOOKUP_ORDER:
            candidates.append((StageFolder.of(checkpoint_dir, stage).best, f"best {stage} checkpoint"))
    candidates.append((pretrained_model(), "pretrained model shipped with deep-speaker"))
    for path, origin in candidates:
        if path.is_file():
            return ResolvedModel(path, config_beside(path), origin)
    raise CheckpointError(f"no model found (tried {', '.join(str(path) for path, _ in candidates)}); train one with "
                          f"train_cli.py --loss_on_softmax then --loss_on_embeddings, or pass --checkpoint FILE")


def config_beside(model_path: str | Path) -> Config:
    """The config.json beside a model file, which every model needs."""
    config_path = Path(model_path).parent / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; every model needs the config.json it was trained with")
    return Config.load(config_path)


def load_embedding_model(resolved: ResolvedModel):
    """The Keras embedding model of `resolved`: (batch, frames, num_fbanks, 1)
    -> (batch, embedding_dim); a training model's speaker head is left out.
    Loaded in safe mode (`deep_speaker.model.load_checkpoint`); a model whose
    input or output does not match its config.json is refused."""
    from deep_speaker.tf_quiet import import_tensorflow

    import_tensorflow()  # before Keras imports it: quiet unless DEEP_SPEAKER_VERBOSE (deep_speaker.tf_quiet)
    from deep_speaker.model import embedding_part, load_checkpoint

    model = load_checkpoint(resolved.path)
    if isinstance(model.output, (list, tuple)) or len(model.outputs) > 1:
        model = embedding_part(model)
    num_fbanks = resolved.config.num_fbanks
    expected = (None, None, num_fbanks, 1)
    shape = tuple(model.input.shape) if not isinstance(model.input, (list, tuple)) else None
    if shape is None or len(shape) != 4 or shape[2:] != expected[2:] or len(model.output.shape) != 2:
        raise CheckpointError(f"{resolved.path}: model takes input {shape} and gives {tuple(model.output.shape)}, "
                              f"but its config.json describes {num_fbanks} filterbanks "
                              f"(input {expected}); not a deep-speaker embedding model with this config")
    return model
