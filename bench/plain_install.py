#!/usr/bin/env python
"""The plain install, for real (not a test; issue 27's check): a new virtual
environment without system site-packages, `pip install <this checkout>` with no
extra, then in it:

- its size on disk (goal <= 400 MB) and that TensorFlow, Keras and the other
  extras' packages are absent;
- `get_emb.py` on real files (vctk-mini and held-out LibriSpeech), against the
  Keras runtime's embeddings of the same files computed by the Python running this
  script (which needs the `train` extra): lowest cosine (goal >= 0.9999);
- `comp_cos.py --files a b` in it against `--runtime keras` here, alternating:
  median wall time and peak RSS, and their ratio (goal <= 0.35 of the time);
- `train_cli.py` and `export_model.py`: one line naming the extra.

    python bench/plain_install.py [--venv DIR] [--keep] [--repeats 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
SHARED = REPO_ROOT.parent / "shared" / "data"
VCTK_MINI = SHARED / "vctk-mini" / "VCTK-Corpus" / "wav48"
LIBRISPEECH = SHARED / "librispeech" / "train-clean-100"
EXTRA_MODULES = ("tensorflow", "keras", "tensorboard", "onnx", "tf2onnx", "sklearn", "matplotlib", "librosa")

from runtimes import _spawn  # noqa: E402  (one child's wall time and its own peak RSS)


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def _files() -> list[Path]:
    vctk = [sorted(folder.glob("*.wav"))[0] for folder in sorted(VCTK_MINI.iterdir())]
    libri = [sorted((LIBRISPEECH / speaker).rglob("*.flac"))[0] for speaker in ("19", "26", "27", "250", "730", "831")]
    return vctk + libri


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", default=None, help="where to make the venv (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the venv")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="plain-install-"))
    venv = Path(args.venv) if args.venv else work / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO_ROOT)],
                       check=True)
        present = subprocess.run([python, "-c", "import importlib.util as u, sys; print(' '.join(m for m in "
                                  f"{EXTRA_MODULES!r} if u.find_spec(m)))"], capture_output=True, text=True,
                                 check=True).stdout.split()
        print(f"plain install: {_size_mb(venv):.0f} MB on disk (goal <= 400), packages of the extras present: "
              f"{', '.join(present) or 'none'}", flush=True)

        files, scripts = _files(), venv / "bin"
        # Timed first: a child forked from this process counts its memory as its own until it execs, so the
        # Keras model must not be loaded here yet.
        first, second = map(str, files[:2])
        runs: dict[str, list[tuple[float, float]]] = {"plain install (onnx)": [], "train install (--runtime keras)": []}
        commands = {"plain install (onnx)": [str(scripts / "comp_cos.py"), "--files", first, second],
                    "train install (--runtime keras)": [sys.executable, str(REPO_ROOT / "scripts" / "comp_cos.py"),
                                                        "--files", first, second, "--runtime", "keras"]}
        for _ in range(args.repeats):
            for label, command in commands.items():
                wall, rss, _, err, code = _spawn(command)
                if code != 0:
                    sys.exit(f"{label}: comp_cos.py failed: {err.strip()}")
                runs[label].append((wall, rss))
        medians = {k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for k, v in runs.items()}
        for label, (wall, rss) in medians.items():
            print(f"plain install: comp_cos.py --files, {label}: median {wall:.2f} s, {rss:.0f} MB peak RSS")
        (plain_s, plain_mb), (keras_s, keras_mb) = medians.values()
        print(f"plain install: ratio {plain_s / keras_s:.2f} of the wall time (goal <= 0.35), "
              f"{plain_mb / keras_mb:.2f} of the peak RSS", flush=True)

        out = work / "plain.npy"
        done = subprocess.run([str(scripts / "get_emb.py"), "--get_embeddings", *map(str, files), "--output", str(out)],
                              capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            sys.exit(f"get_emb.py in the plain install failed: {done.stderr.strip()}")
        from deep_speaker.encoder import SpeakerEncoder

        keras = SpeakerEncoder(runtime="keras").embed_files(files)
        plain = np.load(out)
        cosines = np.sum(plain * keras, axis=1)
        print(f"plain install: get_emb.py on {len(files)} real files ({done.stdout.splitlines()[0]}): lowest cosine to "
              f"the Keras runtime here {cosines.min():.7f} (goal >= 0.9999)", flush=True)

        for command in (["train_cli.py", "--loss_on_softmax"], ["export_model.py", "--output_dir", str(work / "x")]):
            done = subprocess.run([str(scripts / command[0]), *command[1:]], capture_output=True, text=True, cwd=work)
            print(f"plain install: {command[0]}: exit {done.returncode}, {done.stderr.strip()}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
