"""deep_speaker.checkpoints: which model a command uses (the lookup order, one
line for each way it fails), the stage folders, and loading a model for embedding."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deep_speaker import checkpoints
from deep_speaker.checkpoints import (EARLIER_STAGE, LOOKUP_ORDER, STAGES, CheckpointError, ResolvedModel, StageFolder,
                                      load_embedding_model, resolve_model)
from deep_speaker.config import Config
from deep_speaker.errors import InputError

TINY = Config(width=0.125)
REPO = Path(__file__).resolve().parents[1]
# Keras 3.15 on numpy 2 warns from inside its own save/convert code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _fake_model(folder: Path, name: str = "best.keras") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"not loaded by resolve_model")
    TINY.save(folder / "config.json")
    return folder / name


def test_stage_order_and_lookup_order():
    assert STAGES == ("softmax", "triplet", "softmax_frozen")
    assert all(STAGES.index(EARLIER_STAGE[stage]) < STAGES.index(stage) for stage in EARLIER_STAGE)
    assert LOOKUP_ORDER == ("triplet", "softmax_frozen", "softmax") and set(LOOKUP_ORDER) == set(STAGES)


def test_resolve_model_order_and_error(tmp_path, monkeypatch):
    pretrained = tmp_path / "pretrained"
    monkeypatch.setattr(checkpoints, "PRETRAINED_DIR", pretrained)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(CheckpointError) as nothing:
        resolve_model(None, ckpt)
    for stage in ("triplet", "softmax_frozen", "softmax"):
        assert str(ckpt / stage / "best.keras") in str(nothing.value)
    assert str(pretrained / "embedding.keras") in str(nothing.value)

    _fake_model(pretrained, "embedding.keras")
    assert resolve_model(None, ckpt).path == pretrained / "embedding.keras"
    assert resolve_model(None, None).path == pretrained / "embedding.keras"
    for stage in ("softmax", "softmax_frozen", "triplet"):  # each new stage takes precedence
        _fake_model(ckpt / stage)
        resolved = resolve_model(None, ckpt)
        assert resolved.path == ckpt / stage / "best.keras" and stage in resolved.origin
        assert resolved.config.width == TINY.width
    explicit = _fake_model(tmp_path / "elsewhere", "mine.keras")
    assert resolve_model(explicit, ckpt).path == explicit
    with pytest.raises(CheckpointError, match="gone.keras: checkpoint not found"):
        resolve_model(tmp_path / "gone.keras", ckpt)  # no silent fallback to another model
    (ckpt / "triplet" / "config.json").unlink()
    with pytest.raises(CheckpointError) as missing:
        resolve_model(None, ckpt)
    assert str(missing.value) == (f"{ckpt / 'triplet' / 'config.json'}: missing; every model needs the config.json "
                                  f"it was trained with")


def test_a_directory_as_checkpoint_is_called_a_directory(tmp_path):
    _fake_model(tmp_path / "triplet")
    with pytest.raises(CheckpointError) as error:
        resolve_model(tmp_path / "triplet", None)
    assert str(error.value) == (f"{tmp_path / 'triplet'}: is a directory, not a checkpoint file (pass its "
                                f"best.keras, or the folder above its stages as --checkpoint_dir)")
    assert isinstance(error.value, InputError)  # a command's one-line error, exit 2


def test_stage_folder_layout(tmp_path):
    folder = StageFolder.of(tmp_path, "triplet")
    assert folder.path == tmp_path / "triplet" and folder.best == tmp_path / "triplet" / "best.keras"
    assert folder.config == tmp_path / "triplet" / "config.json"
    assert StageFolder.of(tmp_path, "triplet", worker=3).path == tmp_path / "triplet" / "workers" / "3"
    assert folder.read_state() is None
    folder.path.mkdir()
    folder.write_state({"epoch": 2, "best": {"test_eer": 0.25}})
    assert folder.read_state()["epoch"] == 2
    folder.state.write_text('{"epoch": -1}')
    with pytest.raises(CheckpointError, match="state.json: not a training state file; rerun with --restart"):
        folder.read_state()


def test_checkpoints_imports_no_tensorflow():
    code = "import sys, deep_speaker.checkpoints; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_load_embedding_model_drops_the_head_and_checks_the_config(tmp_path):
    import keras

    from deep_speaker.model import attach_head, build_embedding_model

    keras.utils.set_random_seed(0)
    attach_head(build_embedding_model(TINY), 3, TINY).save(tmp_path / "best.keras")
    model = load_embedding_model(ResolvedModel(tmp_path / "best.keras", TINY, "test"))
    assert len(model.outputs) == 1 and tuple(model.output.shape) == (None, TINY.embedding_dim)
    other = TINY.override(num_fbanks=40)
    with pytest.raises(CheckpointError, match=r"best.keras: model takes input .* describes 40 filterbanks"):
        load_embedding_model(ResolvedModel(tmp_path / "best.keras", other, "test"))
