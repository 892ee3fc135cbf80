"""The model's runtimes (deep_speaker.runtimes): the shipped ONNX export is the shipped
Keras model, ONNX Runtime and Keras give the same embeddings on real speech, and
`auto` picks ONNX only for an export of the very .keras file it is beside."""
from __future__ import annotations

import hashlib
import logging
import shutil

import numpy as np
import pytest

from conftest import TINY_LIBRISPEECH_FILES
from deep_speaker.checkpoints import CheckpointError, pretrained_model, resolve_model
from deep_speaker.errors import InputError
from deep_speaker.runtimes import KERAS_SHA256_KEY, OnnxEmbeddingModel, load_runtime, onnx_beside

# Keras 3.15 on numpy 2 warns from inside its own convert code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
MIN_COSINE = 0.9999  # issue 27: ONNX and Keras embeddings of the same file


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _real_files(shared_data, vctk_corpus) -> list:
    """Held-out LibriSpeech (speakers 19, 26, 27: never trained on) and one file of
    every other vctk-mini speaker: 16 kHz FLAC and 48 kHz WAV, 2-6 s each."""
    libri = [shared_data / "librispeech" / "train-clean-100" / f
             for files in TINY_LIBRISPEECH_FILES.values() for f in files[:2]]
    vctk = [sorted(folder.glob("*.wav"))[0] for folder in sorted((vctk_corpus / "wav48").iterdir())[::2]]
    return libri + vctk


def test_the_shipped_onnx_export_records_the_shipped_keras_file():
    model = OnnxEmbeddingModel(onnx_beside(pretrained_model()))
    assert model.keras_sha256 == _sha256(pretrained_model())
    assert (model.num_fbanks, model.embedding_dim) == (64, 512)
    assert model.metadata["deep_speaker.opset"] == "17"


@pytest.fixture(scope="module")
def encoders():
    from deep_speaker.encoder import SpeakerEncoder

    return {runtime: SpeakerEncoder(runtime=runtime) for runtime in ("onnx", "keras")}


def test_auto_runs_the_shipped_model_in_onnx_runtime():
    from deep_speaker.encoder import SpeakerEncoder

    encoder = SpeakerEncoder()
    assert encoder.runtime == "onnx"
    assert encoder.model_identity["sha256"] == _sha256(pretrained_model())  # identity: the .keras file still


def test_onnx_and_keras_embeddings_agree_on_real_speech(encoders, shared_data, vctk_corpus):
    files = _real_files(shared_data, vctk_corpus)
    onnx, ok_onnx, _ = encoders["onnx"].embed_files(files, skip=True)
    keras, ok_keras, _ = encoders["keras"].embed_files(files, skip=True)
    assert ok_onnx == ok_keras and len(ok_onnx) == len(files)
    cosines = np.sum(onnx * keras, axis=1)
    assert cosines.min() >= MIN_COSINE, dict(zip(map(str, files), cosines.round(7)))


def test_a_new_export_gives_the_shipped_onnx_embeddings(tmp_path):
    """Exporting the shipped Keras model again gives what the shipped .onnx gives:
    the file in the package is what export_model.py makes of the .keras beside it."""
    from deep_speaker.checkpoints import load_embedding_model
    from deep_speaker.export import export_onnx

    resolved = resolve_model()
    target = export_onnx(load_embedding_model(resolved), resolved.config, tmp_path / "embedding.onnx",
                         _sha256(resolved.path))
    fresh, shipped = OnnxEmbeddingModel(target), OnnxEmbeddingModel(onnx_beside(resolved.path))
    rng = np.random.default_rng(0)
    for frames in (10, 333):
        x = rng.normal(size=(2, frames, 64, 1)).astype(np.float32)
        np.testing.assert_allclose(fresh(x), shipped(x), atol=1e-5)
    assert fresh.keras_sha256 == shipped.keras_sha256


@pytest.fixture
def model_copy(tmp_path):
    """The pretrained model's .keras, config.json and .onnx in a folder of their own."""
    for name in ("embedding.keras", "config.json", "embedding.onnx"):
        shutil.copy(pretrained_model().parent / name, tmp_path / name)
    return tmp_path / "embedding.keras"


def test_auto_runs_keras_without_an_export_and_onnx_refuses(model_copy):
    onnx_beside(model_copy).unlink()
    resolved = resolve_model(model_copy)
    assert load_runtime(resolved, "auto").name == "keras"
    with pytest.raises(CheckpointError, match=r"embedding\.onnx: missing, so --runtime onnx cannot run .*export_model"):
        load_runtime(resolved, "onnx")


def test_an_export_of_other_weights_is_not_used(model_copy, caplog):
    """A .keras file changed after its export (retrained, replaced) must not be scored
    by the stale .onnx: auto warns and runs Keras, onnx refuses."""
    import onnx

    proto = onnx.load(str(onnx_beside(model_copy)))
    for prop in proto.metadata_props:
        if prop.key == KERAS_SHA256_KEY:
            prop.value = "0" * 64
    onnx.save(proto, str(onnx_beside(model_copy)))
    resolved = resolve_model(model_copy)
    with caplog.at_level(logging.WARNING, logger="deep_speaker.runtimes"):
        assert load_runtime(resolved, "auto").name == "keras"
    assert "exported from another model file" in caplog.text
    with pytest.raises(CheckpointError, match="exported from another model file than embedding.keras"):
        load_runtime(resolved, "onnx")


def test_a_damaged_onnx_file_is_one_clear_error(model_copy):
    onnx_beside(model_copy).write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"embedding\.onnx: not a loadable ONNX model"):
        load_runtime(resolve_model(model_copy), "onnx")


def test_an_unknown_runtime_is_refused():
    with pytest.raises(InputError, match="unknown runtime 'torch'; choose one of auto, onnx, keras"):
        load_runtime(resolve_model(), "torch")
