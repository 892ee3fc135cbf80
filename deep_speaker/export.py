"""Export the embedding model for use outside deep-speaker.

Writes, into one folder:
- ``embedding.keras``: the embedding model alone (no speaker head), Keras format;
- ``config.json``: the Config it was trained with (features, width, ...);
- ``saved_model/``: a TensorFlow SavedModel whose ``serve`` signature maps a
  batch of normalised 8 kHz log-fbank frames (batch, frames, num_fbanks, 1)
  float32 to unit embeddings (batch, embedding_dim).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from deep_speaker.checkpoints import CONFIG_FILE, EMBEDDING_FILE, ResolvedModel, load_embedding_model


def export_model(resolved: ResolvedModel, output_dir: str | Path, saved_model: bool = True) -> list[Path]:
    """Write the export folder; returns the paths written."""
    import tensorflow as tf

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_embedding_model(resolved)
    keras_path = output_dir / EMBEDDING_FILE
    tmp = output_dir / ".embedding.tmp.keras"
    model.save(tmp)
    tmp.replace(keras_path)
    config_path = output_dir / CONFIG_FILE
    resolved.config.save(config_path)
    written = [keras_path, config_path]
    if saved_model:
        target = output_dir / "saved_model"
        staging = output_dir / ".saved_model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        spec = tf.TensorSpec((None, None, resolved.config.num_fbanks, 1), tf.float32, name="fbank")
        model.export(str(staging), format="tf_saved_model", verbose=False, input_signature=[spec])
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        written.append(target)
    return written
