"""What a plain install (`pip install deep-speaker`: ONNX Runtime, no TensorFlow) can
do, checked in a Python that cannot import the packages of the extras.

A `sitecustomize` on PYTHONPATH hides TensorFlow, Keras, TensorBoard, the ONNX
converter, scikit-learn, matplotlib and librosa from the interpreter and from every
process it starts. In it, the seed's data stages and every scoring command work, and
the commands that need an extra stop at once with one line that names it.
(bench/plain_install.py checks the same in a real venv made by `pip install .`.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile

# The import names of the extras' packages (deep_speaker.requirements), and what they pull in.
HIDDEN = ("tensorflow", "keras", "tensorboard", "onnx", "tf2onnx", "sklearn", "matplotlib", "librosa", "numba")

SITECUSTOMIZE = textwrap.dedent(f"""
    import sys

    HIDDEN = {HIDDEN!r}


    class _NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None


    sys.meta_path.insert(0, _NotInstalled())
""")

# Runs in that interpreter: each command's main() in turn, recording exit code, stdout and stderr.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys

    import numpy as np

    from deep_speaker.commands import (comp_cos, diarize, evaluate, export_model, get_emb, identify, preprocess,
                                       train_cli)

    calls, results = json.loads(sys.argv[1]), {}
    modules = {"preprocess": preprocess, "get_emb": get_emb, "comp_cos": comp_cos, "identify": identify,
               "train_cli": train_cli, "export_model": export_model, "evaluate": evaluate, "diarize": diarize}
    for label, command, argv in calls:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = modules[command].main(argv)
        results[label] = [code, out.getvalue(), err.getvalue()]
    results["loaded"] = sorted({name.split(".")[0] for name in sys.modules} & set(%r))
    print(json.dumps(results))
""" % (HIDDEN,))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, vctk_corpus):
    work = tmp_path_factory.mktemp("plain")
    (work / "site").mkdir()
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    corpus = work / "VCTK-Corpus" / "wav48"
    speakers = ("p225", "p226", "p227")
    for speaker in speakers:
        (corpus / speaker).mkdir(parents=True)
        for wav in sorted((vctk_corpus / "wav48" / speaker).glob("*.wav"))[:3]:
            (corpus / speaker / wav.name).symlink_to(wav)
    cache, files = str(work / "cache"), [str(p) for p in sorted(corpus.glob("p22[56]/*.wav"))[::3]]
    talk = work / "talk.wav"  # p225, a pause, p226, a pause, p225: a recording to diarize
    turns = [soundfile.read(p, dtype="float32") for p in (files[0], files[1], sorted(corpus.glob("p225/*.wav"))[1])]
    pause = np.zeros(int(0.8 * turns[0][1]), np.float32)
    soundfile.write(talk, np.concatenate([part for audio, _ in turns for part in (audio, pause)]), turns[0][1])
    calls = [
        ("cache", "preprocess", ["--regenerate_full_cache", "--multi_threading", "--audio_dir", str(corpus.parent),
                                 "--cache_output_dir", cache]),
        ("inputs", "preprocess", ["--generate_training_inputs", "--multi_threading", "--cache_output_dir", cache]),
        ("get_emb", "get_emb", ["--get_embeddings", *files, "--output", str(work / "emb.npy")]),
        ("san", "comp_cos", ["--unseen_speakers", "p225,p226", "--cache_output_dir", cache]),
        ("files", "comp_cos", ["--files", *files[:2], "--json"]),
        ("enrol", "identify", ["--enroll", str(corpus), "--output", str(work / "enrolment.npz")]),
        ("identify", "identify", ["--enrolment", str(work / "enrolment.npz"), "--files", files[0], "--json"]),
        ("diarize", "diarize", [str(talk), "--rttm", str(work / "rttm"), "--enrolment", str(work / "enrolment.npz"),
                                "--json"]),
        ("plot", "diarize", [str(talk), "--plot", str(work / "plots")]),
        ("train", "train_cli", ["--loss_on_softmax", "--cache_output_dir", cache]),
        ("export", "export_model", ["--output_dir", str(work / "export")]),
        ("keras", "comp_cos", ["--files", *files[:2], "--runtime", "keras"]),
        ("evaluate", "evaluate", ["--audio_dir", str(corpus), "--output_dir", str(work / "eval")]),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "site"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), work, files


def test_nothing_of_the_extras_was_loaded(plain_run):
    results, _, _ = plain_run
    assert results["loaded"] == []


def test_the_data_stages_work(plain_run):
    results, work, _ = plain_run
    for stage in ("cache", "inputs"):
        code, _, err = results[stage]
        assert code == 0, err
    assert len(list((work / "cache" / "audio_cache_pkl").glob("*.pkl"))) == 9
    assert (work / "cache" / "full_inputs.pkl").is_file()


def test_scoring_and_identification_work_in_onnx_runtime(plain_run):
    results, _, _ = plain_run
    for label in ("get_emb", "san", "files", "enrol", "identify"):
        code, _, err = results[label]
        assert code == 0, (label, err)
    assert "runtime onnx" in results["get_emb"][1]
    assert results["san"][1].splitlines()[-1].startswith("SAN (p225 vs p226): distance ")
    assert json.loads(results["identify"][1])["results"][0]["speaker"] == "p225"


def test_diarization_works_with_its_plda_and_names(plain_run):
    results, work, _ = plain_run
    code, out, err = results["diarize"]
    assert code == 0, err
    found = json.loads(out)["results"][0]
    # p225 is named (enrolled from these files); p226's one second of speech is named or stays numbered,
    # never given another enrolled name.
    assert found["reason"] == "" and found["speakers"][0] == "p225", found["segments"]
    assert found["num_speakers"] == 2 and found["speakers"][1] in ("p226", "speaker_1"), found["segments"]
    assert (work / "rttm" / "talk.rttm").read_text().startswith("SPEAKER talk 1 ")


def test_the_embeddings_are_the_keras_ones(plain_run):
    """get_emb.py without TensorFlow gives, to a cosine of 0.9999, what Keras gives here."""
    from deep_speaker.encoder import SpeakerEncoder

    _, work, files = plain_run
    plain = np.load(work / "emb.npy")
    keras = SpeakerEncoder(runtime="keras").embed_files(files)
    assert plain.shape == keras.shape == (len(files), 512)
    assert np.sum(plain * keras, axis=1).min() >= 0.9999


@pytest.mark.parametrize("label, extra", [("train", "train"), ("export", "train"), ("keras", "train"),
                                          ("evaluate", "eval"), ("plot", "eval")])
def test_what_needs_an_extra_says_which_in_one_line(plain_run, label, extra):
    results, work, _ = plain_run
    code, _, err = results[label]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and lines[0].endswith(f'pip install "deep-speaker[{extra}]"'), lines[0]
    assert not (work / "export").exists() and not (work / "eval").exists() and not (work / "plots").exists()
