"""The flow of docs/training-a-strong-model.md, end to end on a tiny corpus:
download a LibriSpeech part (a small archive of real LibriSpeech files, served
on a loopback port) with download_corpus.py, preprocess it as a two-machine job
array (--shard 0/2 and 1/2 into one cache), generate the training inputs (which
packs the feature store), then train with --strategy multiworker on two local
workers that each read their own share of the store's shards.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import free_ports
from deep_speaker.commands import download_corpus, preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO_ROOT.parent / "shared" / "data" / "librispeech" / "train-clean-100"
FILES = ("19/198/19-198-0000.flac", "19/198/19-198-0008.flac", "26/495/26-495-0019.flac",
         "26/495/26-495-0020.flac", "27/124992/27-124992-0026.flac", "27/124992/27-124992-0062.flac",
         "32/21625/32-21625-0000.flac", "39/121914/39-121914-0000.flac")
TIMEOUT = 300


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def quiet(main, argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    return code, out.getvalue()


def test_librispeech_download_sharded_preprocessing_and_two_workers_reading_the_store(tmp_path):
    for relative in FILES:
        if not (LIBRISPEECH / relative).is_file():
            pytest.skip(f"real speech not found: {LIBRISPEECH / relative}")
    # 1. A train-clean-100.tar.gz laid out as OpenSLR's, on a loopback mirror.
    served = tmp_path / "mirror"
    served.mkdir()
    with tarfile.open(served / "train-clean-100.tar.gz", "w:gz") as archive:
        for relative in FILES:
            archive.add(LIBRISPEECH / relative, arcname=f"LibriSpeech/train-clean-100/{relative}")
        readme = b"LibriSpeech excerpt for a test\n"
        info = tarfile.TarInfo("LibriSpeech/README.TXT")
        info.size = len(readme)
        archive.addfile(info, io.BytesIO(readme))
    sha256 = hashlib.sha256((served / "train-clean-100.tar.gz").read_bytes()).hexdigest()
    root = tmp_path / "data"
    with serving(served) as mirror:
        code, out = quiet(download_corpus.main, ["--librispeech", "train-clean-100", "--mirror", mirror,
                                                 "--sha256", sha256, "--data_root", str(root), "--no_progress"])
    assert code == 0, out
    corpus = root / "LibriSpeech"
    assert sorted(str(p.relative_to(corpus / "train-clean-100")) for p in corpus.rglob("*.flac")) == sorted(FILES)
    # 2. Sharded preprocessing into one cache, then stage 2, which packs the store.
    cache = tmp_path / "cache"
    for shard in ("0/2", "1/2"):
        code, out = quiet(preprocess.main, ["--update_cache", "--shard", shard, "--audio_dir", str(corpus),
                                            "--cache_output_dir", str(cache)])
        assert code == 0, out
    code, out = quiet(preprocess.main, ["--generate_training_inputs", "--cache_output_dir", str(cache),
                                        "--store_shard_mb", "0.1"])
    assert code == 0 and "feature store: packed 5 speakers" in out, out
    manifest = json.loads((cache / "store" / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 3 and manifest["dtype"] == "float16"
    # 3. Two workers, each reading its share of the store.
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    argv = ["--loss_on_softmax", "--width", "0.125", "--frames", "64", "--batch_size", "8", "--seed", "3",
            "--steps_per_epoch", "2", "--epochs", "1", "--strategy", "multiworker",
            "--cache_output_dir", str(cache), "--checkpoint_dir", str(tmp_path / "checkpoints")]
    workers = [subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / "train_cli.py"), *argv], cwd=REPO_ROOT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                     "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                           "index": index}})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for index in range(2)]
    try:
        outputs = [worker.communicate(timeout=TIMEOUT)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    failed = [f"worker {index} failed ({worker.returncode}):\n{out[-2500:]}"
              for index, (worker, out) in enumerate(zip(workers, outputs)) if worker.returncode != 0]
    assert not failed, "\n".join(failed)
    shares = []
    for index, out in enumerate(outputs):
        match = re.search(rf"input pipeline {index} of 2 reads (\d+) of (\d+) store shards", out)
        assert match, out[-3000:]
        shares.append(int(match.group(1)))
        assert int(match.group(2)) == len(manifest["shards"])
    from deep_speaker.feature_store import FeatureStore

    training_shards = FeatureStore(cache).bank("train").shards_used
    assert sum(shares) == len(training_shards) >= 2 and all(shares)  # each its own part, together all
    chief, other = tmp_path / "checkpoints" / "softmax", tmp_path / "checkpoints" / "softmax" / "workers" / "1"
    first = keras.models.load_model(chief / "last.keras", compile=False, safe_mode=True).get_weights()
    second = keras.models.load_model(other / "last.keras", compile=False, safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # one model, trained on both shares
