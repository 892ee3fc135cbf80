"""The runtimes that run an embedding model: ONNX Runtime or Keras on TensorFlow.

A model is its ``.keras`` file (with config.json beside it); `export_model.py
--format onnx` writes the same network as ``<name>.onnx`` beside it, which
records the SHA-256 of the ``.keras`` file it was exported from. The model's
identity (what enrolments and the score cohort record) stays that ``.keras``
SHA-256 whichever runtime runs it, since both give the same embeddings (to a
cosine of 0.9999 and better; docs/results.md has the measurement).

- ``onnx``: ONNX Runtime on the ``.onnx`` file: no deep-learning framework, a
  plain install (`pip install deep-speaker`) has all it needs.
- ``keras``: the ``.keras`` file on TensorFlow (the ResCNN folded for speed,
  `deep_speaker.inference`); needs the ``train`` extra.
- ``auto`` (the default): ``onnx`` when an export of this very ``.keras`` file
  lies beside it, else ``keras``.

Only the standard library and the light modules are imported here; ONNX Runtime
and TensorFlow are imported when a model is loaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from deep_speaker.checkpoints import CheckpointError, ResolvedModel, load_embedding_model
from deep_speaker.errors import InputError
from deep_speaker.extras import missing_modules, require_extra

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "keras")
# The ONNX opset of exports: 17 is the newest opset tf2onnx 1.17 converts every op of the ResCNN to
# that ONNX Runtime 1.19 (the lowest supported) runs.
ONNX_OPSET = 17
ONNX_INPUT_NAME = "fbank"  # (batch, frames, num_fbanks, 1) float32, normalised log filterbanks
# Metadata an export records (ONNX model metadata_props), read back when it is loaded.
KERAS_SHA256_KEY = "deep_speaker.keras_sha256"  # the .keras file it was exported from
# ONNX Runtime's threads per model run (0: one per core). One, measured by bench/runtimes.py on 2 cores
# (docs/results.md): one utterance at a time is too little work to split, so more threads only wait on
# each other (56 files/s with 1 thread, 36 with 2), and embed_files' decode pool uses the other cores
# (78 files/s with 1 thread and 2 decode workers, 56 with 2 and 2).
ONNX_INTRA_OP_THREADS = 1


def onnx_beside(model_path: str | Path) -> Path:
    """Where a model's ONNX export lies: beside it, same name.

    >>> onnx_beside("pretrained/embedding.keras").as_posix()
    'pretrained/embedding.onnx'
    """
    return Path(model_path).with_suffix(".onnx")


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


class OnnxEmbeddingModel:
    """An exported embedding model in ONNX Runtime: (batch, frames, num_fbanks, 1)
    float32 -> (batch, embedding_dim) numpy."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = ONNX_INTRA_OP_THREADS if threads is None else threads
        options.inter_op_num_threads = 1  # one chain of ops: a second pool would only wait
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's input
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({type(error).__name__}: "
                                  f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
            raise CheckpointError(f"{self.path}: takes {[i.shape for i in inputs]} and gives "
                                  f"{[o.shape for o in outputs]}; not a deep-speaker embedding model export")
        self.input_name = inputs[0].name
        self.num_fbanks = inputs[0].shape[2]
        self.embedding_dim = outputs[0].shape[1]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def keras_sha256(self) -> str | None:
        return self.metadata.get(KERAS_SHA256_KEY)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


@dataclass
class LoadedRuntime:
    name: str  # "onnx" or "keras"
    forward: Callable  # (batch, frames, num_fbanks, 1) float32 -> (batch, embedding_dim), array-like
    embedding_dim: int
    path: Path  # the file it runs: the .onnx or the .keras


def load_runtime(resolved: ResolvedModel, runtime: str = "auto", keras_sha256: str | None = None) -> LoadedRuntime:
    """Load `resolved`'s model in `runtime` ("auto", "onnx" or "keras").

    keras_sha256: the SHA-256 of ``resolved.path`` (computed here when not given): an
    ONNX file beside the model is used only when it records this digest."""
    check_runtime(runtime)
    onnx_path = onnx_beside(resolved.path)
    if runtime == "keras":
        return _load_keras(resolved)
    if not onnx_path.is_file():
        if runtime == "onnx":
            raise CheckpointError(f"{onnx_path}: missing, so --runtime onnx cannot run {resolved.path}; "
                                  f"export_model.py --checkpoint {resolved.path} --output_dir DIR writes "
                                  f"DIR/embedding.keras with its embedding.onnx")
        if missing_modules("train", ("tensorflow", "keras")):
            raise CheckpointError(f"{resolved.path}: no ONNX export beside it ({onnx_path.name}) and this install has "
                                  f"no TensorFlow to run the .keras file; export it with export_model.py where "
                                  f"TensorFlow is installed, or pip install \"deep-speaker[train]\"")
        return _load_keras(resolved)
    model = OnnxEmbeddingModel(onnx_path)
    if keras_sha256 is None:
        from deep_speaker.identification import model_identity

        keras_sha256 = model_identity(resolved.path)["sha256"]
    if model.keras_sha256 != keras_sha256:
        problem = (f"{onnx_path}: exported from another model file than {resolved.path.name} (it records "
                   f"{model.keras_sha256 or 'no source digest'}); export it again with export_model.py")
        if runtime == "onnx" or missing_modules("train", ("tensorflow", "keras")):
            raise CheckpointError(problem)
        log.warning("%s; running the .keras file instead", problem)
        return _load_keras(resolved)
    if model.num_fbanks != resolved.config.num_fbanks:
        raise CheckpointError(f"{onnx_path}: takes {model.num_fbanks} filterbanks but its config.json describes "
                              f"{resolved.config.num_fbanks}")
    return LoadedRuntime("onnx", model, int(model.embedding_dim), onnx_path)


def _load_keras(resolved: ResolvedModel) -> LoadedRuntime:
    require_extra("train", "the Keras runtime (--runtime keras, or a model without an .onnx export beside it)",
                  ("tensorflow", "keras"))
    from deep_speaker.tf_quiet import import_tensorflow

    tf = import_tensorflow()  # the first import without TensorFlow's start-up noise on stderr
    from deep_speaker.inference import fold_rescnn

    model = load_embedding_model(resolved)
    # The ResCNN runs folded and eager (no trace, no Keras overhead); any other
    # model through one tf.function for every utterance length (no retracing per file).
    forward = fold_rescnn(model, resolved.config.clipped_relu_max)
    if forward is None:
        spec = tf.TensorSpec((1, None, resolved.config.num_fbanks, 1), tf.float32)
        forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return LoadedRuntime("keras", forward, int(model.output.shape[-1]), resolved.path)
