"""export_model.py: the exported .keras model, ONNX model and SavedModel reload in a
fresh process that never imports deep_speaker, and give the original model's embeddings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deep_speaker.commands import export_model
from deep_speaker.config import Config

NUM_SPEAKERS = 5
# Keras 3.15 on numpy 2 warns from inside its own predict/convert code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TINY = Config(width=0.125, speakers=[f"s{i}" for i in range(NUM_SPEAKERS)])

# Run in a fresh interpreter, outside the repository: only Keras and TensorFlow.
RELOAD = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np
    import keras
    import tensorflow as tf

    export, work = Path(sys.argv[1]), Path(sys.argv[2])
    model = keras.models.load_model(export / "embedding.keras", safe_mode=True, compile=False)
    served = tf.saved_model.load(str(export / "saved_model"))
    for name in ("x", "x_other_length"):
        x = np.load(work / f"{name}.npy")
        np.save(work / f"{name}.keras.npy", np.asarray(model.predict(x, verbose=0)))
        np.save(work / f"{name}.saved_model.npy", served.serve(tf.constant(x)).numpy())
    import hashlib
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export / "embedding.onnx"), providers=["CPUExecutionProvider"])
    for name in ("x", "x_other_length"):
        x = np.load(work / f"{name}.npy")
        np.save(work / f"{name}.onnx.npy", session.run(None, {"fbank": x})[0])
    recorded = session.get_modelmeta().custom_metadata_map["deep_speaker.keras_sha256"]
    assert recorded == hashlib.sha256((export / "embedding.keras").read_bytes()).hexdigest(), recorded
    np.save(work / "num_outputs.npy", np.array(len(model.outputs)))
    assert not any(m == "deep_speaker" or m.startswith("deep_speaker.") for m in sys.modules), "imported deep_speaker"
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A softmax-stage checkpoint (embedding model + speaker head) and the model itself."""
    import keras

    from deep_speaker.model import attach_head, build_embedding_model

    checkpoint_dir = tmp_path_factory.mktemp("export") / "checkpoints"
    stage = checkpoint_dir / "softmax"
    stage.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    model = attach_head(build_embedding_model(TINY), NUM_SPEAKERS, TINY)
    model.save(stage / "best.keras")
    TINY.save(stage / "config.json")
    return checkpoint_dir, model


def test_export_reloads_in_fresh_process_with_same_embeddings(trained, tmp_path, capsys):
    checkpoint_dir, model = trained
    export = tmp_path / "export"
    assert export_model.main(["--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(export)]) == 0
    assert "exported: " in capsys.readouterr().out
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "embedding.keras", "embedding.onnx", "saved_model"]
    assert json.loads((export / "config.json").read_text()) == TINY.to_dict()

    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(3, 200, 64, 1)).astype(np.float32),
              "x_other_length": rng.normal(size=(2, 37, 64, 1)).astype(np.float32)}
    expected = {}
    for name, x in inputs.items():
        np.save(tmp_path / f"{name}.npy", x)
        expected[name] = np.asarray(model(x, training=False)[0])  # the embedding output, not the head
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), str(export), str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert int(np.load(tmp_path / "num_outputs.npy")) == 1  # the speaker head is not exported
    for name, x in inputs.items():
        for form in ("keras", "saved_model", "onnx"):
            got = np.load(tmp_path / f"{name}.{form}.npy")
            assert got.shape == (len(x), TINY.embedding_dim), (name, form)
            np.testing.assert_allclose(got, expected[name], atol=1e-5, err_msg=f"{name} via {form}")
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_export_without_saved_model(trained, tmp_path, capsys):
    checkpoint_dir, _ = trained
    export = tmp_path / "export"
    assert export_model.main(["--checkpoint", str(checkpoint_dir / "softmax" / "best.keras"),
                              "--output_dir", str(export), "--no_saved_model"]) == 0
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "embedding.keras", "embedding.onnx"]


def test_export_into_the_models_own_folder_keeps_its_files(trained, tmp_path, capsys):
    """The shipped model's .onnx is written this way: its embedding.keras (whose digest
    the score cohort records) and config.json must stay byte for byte as they were."""
    checkpoint_dir, _ = trained
    folder = tmp_path / "model"
    assert export_model.main(["--checkpoint", str(checkpoint_dir / "softmax" / "best.keras"),
                              "--output_dir", str(folder), "--format", "saved_model"]) == 0
    before = {name: (folder / name).read_bytes() for name in ("embedding.keras", "config.json")}
    capsys.readouterr()
    assert export_model.main(["--checkpoint", str(folder / "embedding.keras"), "--output_dir", str(folder),
                              "--format", "onnx"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"exported: {folder / 'embedding.onnx'}")
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_export_missing_checkpoint_is_one_line(tmp_path, capsys):
    missing = tmp_path / "none.keras"
    code = export_model.main(["--checkpoint", str(missing), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: {missing}: checkpoint not found"
    assert not (tmp_path / "out").exists()
