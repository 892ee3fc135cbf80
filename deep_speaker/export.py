"""Export the embedding model for use outside deep-speaker.

Writes, into one folder:
- ``embedding.keras``: the embedding model alone (no speaker head), Keras format;
- ``config.json``: the Config it was trained with (features, width, ...);
- ``embedding.onnx`` (format "onnx"): the same network for ONNX Runtime, which
  `SpeakerEncoder` runs without TensorFlow (`deep_speaker.runtimes`). Keras's own
  ONNX export (`Model.export(format="onnx")`, which converts with tf2onnx), opset
  `ONNX_OPSET`; it records the SHA-256 of the ``embedding.keras`` beside it;
- ``saved_model/`` (format "saved_model"): a TensorFlow SavedModel.

Both exports map a batch of normalised 8 kHz log-fbank frames ``fbank`` (batch,
frames, num_fbanks, 1) float32, any number of frames, to unit embeddings (batch,
embedding_dim).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path

from deep_speaker.checkpoints import CONFIG_FILE, EMBEDDING_FILE, ResolvedModel, load_embedding_model
from deep_speaker.config import Config
from deep_speaker.extras import require_extra
from deep_speaker.runtimes import KERAS_SHA256_KEY, ONNX_INPUT_NAME, ONNX_OPSET, onnx_beside

FORMATS = ("onnx", "saved_model")  # besides embedding.keras and config.json, always written
METADATA_PREFIX = "deep_speaker."


def export_model(resolved: ResolvedModel, output_dir: str | Path, formats=FORMATS) -> list[Path]:
    """Write the export folder; returns the paths written. An export into the
    model's own folder (its file is ``embedding.keras`` there) keeps that file and
    its config.json as they are, so what records their digest (the score cohort)
    still matches."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; known: {FORMATS}")
    require_extra("train", "export_model.py", ("tensorflow", "keras") + (("onnx", "tf2onnx") if "onnx" in formats else ()))
    from deep_speaker.identification import model_identity

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_embedding_model(resolved)
    keras_path = output_dir / EMBEDDING_FILE
    written = []
    if keras_path.resolve() != resolved.path.resolve():
        tmp = output_dir / ".embedding.tmp.keras"
        model.save(tmp)
        tmp.replace(keras_path)
        resolved.config.save(output_dir / CONFIG_FILE)
        written += [keras_path, output_dir / CONFIG_FILE]
    if "onnx" in formats:
        written.append(export_onnx(model, resolved.config, onnx_beside(keras_path), model_identity(keras_path)["sha256"]))
    if "saved_model" in formats:
        written.append(export_saved_model(model, resolved.config, output_dir / "saved_model"))
    return written


def _input_spec(config: Config):
    import tensorflow as tf

    return tf.TensorSpec((None, None, config.num_fbanks, 1), tf.float32, name=ONNX_INPUT_NAME)


def export_onnx(model, config: Config, target: str | Path, keras_sha256: str, opset: int = ONNX_OPSET) -> Path:
    """Write `model` as ONNX to `target` (atomically), recording the digest of the
    .keras file it stands for and how it was made in the model's metadata."""
    import keras
    import onnx
    import tf2onnx

    target = Path(target)
    tmp = target.with_name(f".{target.stem}.tmp.onnx")
    try:
        with _quiet_converter():
            model.export(str(tmp), format="onnx", verbose=False, input_signature=[_input_spec(config)],
                         opset_version=opset)
        proto = onnx.load(str(tmp))
        metadata = {KERAS_SHA256_KEY: keras_sha256,
                    f"{METADATA_PREFIX}converter": f"keras {keras.__version__} Model.export(format='onnx'), "
                                                   f"tf2onnx {tf2onnx.__version__}",
                    f"{METADATA_PREFIX}opset": str(opset),
                    f"{METADATA_PREFIX}num_fbanks": str(config.num_fbanks),
                    f"{METADATA_PREFIX}sample_rate_hz": str(config.sample_rate_hz)}
        del proto.metadata_props[:]
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        proto.doc_string = ("deep-speaker speaker embeddings: fbank (batch, frames, num_fbanks, 1) normalised log "
                            "filterbanks -> unit embeddings (batch, embedding_dim); config.json beside it")
        onnx.save(proto, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _quiet_converter():
    """tf2onnx logs each conversion step at INFO, and Keras's patch of it for numpy 2
    warns on numpy's behalf: neither is news to the user (DEEP_SPEAKER_VERBOSE=1 shows them)."""
    if os.environ.get("DEEP_SPEAKER_VERBOSE") == "1":
        yield
        return
    converter_log = logging.getLogger("tf2onnx")
    level = converter_log.level
    converter_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        converter_log.setLevel(level)


def export_saved_model(model, config: Config, target: str | Path) -> Path:
    """Write `model` as a TensorFlow SavedModel folder (staged, then renamed into place)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.export(str(staging), format="tf_saved_model", verbose=False, input_signature=[_input_spec(config)])
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
