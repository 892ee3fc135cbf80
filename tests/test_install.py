"""`pip install .` as a new user runs it: the seed-named scripts land on the PATH and
score files with the pretrained model inside the installed package, from any folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_pip_install_gives_get_emb_py_with_the_packaged_model(vctk_corpus, tmp_path):
    target = tmp_path / "site"
    # --no-deps: the test's own environment already has TensorFlow and the rest.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(REPO)], check=True, timeout=300)
    script = target / "bin" / "get_emb.py"
    pretrained = target / "deep_speaker" / "pretrained"
    assert script.is_file() and (pretrained / "embedding.keras").is_file() and (pretrained / "embedding.onnx").is_file()
    wav = sorted((vctk_corpus / "wav48" / "p225").glob("*.wav"))[0]
    flac = sorted((REPO / "deep-speaker-data" / "demo" / "VCTK-Corpus" / "wav48" / "p226").glob("*.flac"))[0]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, not the clone
    done = subprocess.run([sys.executable, str(script), "--get_embeddings", str(wav), str(flac), "--output", "e.npy"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"model: {pretrained / 'embedding.keras'} (pretrained" in done.stdout
    assert "runtime onnx)" in done.stdout  # the packaged ONNX export, tied to the packaged .keras file
    embeddings = np.load(work / "e.npy")
    assert embeddings.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert (work / "e.files.txt").read_text().splitlines() == [str(wav), str(flac)]
