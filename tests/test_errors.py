"""Errors that tell the truth (issue 17, item 4).

- Expected failures (`deep_speaker.errors` types, OSError) are one line, exit 2.
- Any other exception is a bug: one line naming the file that holds its traceback,
  exit 1; `--verbose` prints the traceback (of expected errors too).
- `--help` of every command imports neither TensorFlow nor soundfile nor soxr.
- TensorFlow's C++ start-up noise stays off stderr unless --verbose, in the commands and in
  the API (`SpeakerEncoder`) alike, unless DEEP_SPEAKER_VERBOSE; a failing import still says why.
- A directory given where a file is expected is reported as a directory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deep_speaker.commands.common import CommandError, run
from deep_speaker.errors import InputError

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.stem for p in (REPO / "scripts").glob("*.py"))
HEAVY = ("tensorflow", "keras", "soundfile", "soxr", "librosa")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_help_of_every_command_imports_no_heavy_module():
    """One process per command, as a user runs `X.py --help`: fast, and usable where
    TensorFlow, soundfile or soxr is missing or broken."""
    code = ("import contextlib, importlib, io, json, sys\n"
            "main = importlib.import_module('deep_speaker.commands.' + sys.argv[1]).main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit as done:\n"
            "        code = done.code\n"
            f"print(json.dumps([code, out.getvalue()[:6], [m for m in {HEAVY!r} if m in sys.modules]]))\n")
    running = {name: subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO) for name in COMMANDS}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, (name, err)
        assert json.loads(out) == [0, "usage:", []], (name, out)


def _run(body, argv, capsys) -> tuple[int, str]:
    code = run(body, argv)
    return code, capsys.readouterr().err


def _raise(error):
    def body(argv):
        raise error
    return body


@pytest.mark.parametrize("error", [CommandError("no such speaker"), InputError("bad value"),
                                   FileNotFoundError(2, "No such file or directory", "a.wav")])
def test_expected_errors_are_one_line_exit_2(error, capsys):
    code, err = _run(_raise(error), [], capsys)
    assert code == 2 and len(_lines(err)) == 1 and err.startswith("error: ") and "Traceback" not in err


def test_a_bug_is_not_dressed_as_a_user_error(capsys):
    """A plain ValueError from deep inside (numpy, Keras, our own slip) is a bug:
    exit 1, one line that says so and where the full traceback went."""
    code, err = _run(_raise(ValueError("operands could not be broadcast")), [], capsys)
    assert code == 1 and len(_lines(err)) == 1, err
    match = re.fullmatch(r"error: internal error ValueError: operands could not be broadcast \(a bug in "
                         r"deep-speaker; traceback in (\S+); --verbose prints it\)\n", err)
    assert match, err
    written = Path(match.group(1))
    try:
        text = written.read_text()
        assert "Traceback (most recent call last)" in text and "ValueError: operands could not be broadcast" in text
    finally:
        written.unlink()


@pytest.mark.parametrize("error, code", [(ValueError("a bug"), 1), (InputError("expected"), 2)])
def test_verbose_always_shows_the_traceback(error, code, capsys):
    got, err = _run(_raise(error), ["--verbose"], capsys)
    assert got == code
    assert "Traceback (most recent call last)" in err and _lines(err)[-1].startswith("error: ")


def test_a_directory_given_as_a_file_is_called_a_directory(tmp_path, capsys):
    from deep_speaker.commands import comp_cos, get_emb

    folder = tmp_path / "folder.wav"
    folder.mkdir()
    code, err = _run(lambda argv: comp_cos.main(["--files", str(folder), str(folder), "--checkpoint",
                                                 str(tmp_path)]), [], capsys)
    assert code == 2 and _lines(err) == [f"error: {tmp_path}: is a directory, not a checkpoint file (pass its "
                                         f"best.keras, or the folder above its stages as --checkpoint_dir)"]
    from deep_speaker.audio import AudioError, read_audio

    with pytest.raises(AudioError, match="is a directory, not an audio file"):
        read_audio(folder)
    code, err = _run(lambda argv: get_emb.main(["--get_embeddings", str(folder), "--output", str(tmp_path / "e.npy")]),
                     [], capsys)
    assert code == 2 and f"skipped {folder}: is a directory, not an audio file" in err, err


# What decides whether TensorFlow's start-up lines reach stderr; the tests start without any of them.
_TF_LOGGING_ENV = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "DEEP_SPEAKER_VERBOSE")


def test_tensorflow_start_up_noise_is_silenced_unless_verbose():
    """On a CPU machine TensorFlow prints cudart_stub / cuInit / absl lines at import
    and first use; a command's stderr carries none of them unless --verbose."""
    code = ("import sys\n"
            "from deep_speaker.commands.common import setup_logging\n"
            "setup_logging(verbose=sys.argv[1] == 'verbose')\n"
            "import keras, tensorflow as tf\n"
            "print(float(tf.reduce_sum(tf.ones([2, 2]))), tf.__spec__.name, keras.__name__)\n")
    env = {k: v for k, v in os.environ.items() if k not in _TF_LOGGING_ENV}
    quiet = subprocess.run([sys.executable, "-c", code, "quiet"], capture_output=True, text=True, cwd=REPO,
                           env=env, timeout=180)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "4.0 tensorflow keras"
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", code, "verbose"], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=180)
    assert loud.returncode == 0 and loud.stdout.strip() == "4.0 tensorflow keras"
    # what TensorFlow says at start-up on this machine (CPU: no CUDA; oneDNN) reaches stderr with --verbose
    assert loud.stderr.strip(), "expected TensorFlow's start-up lines with --verbose"


def test_the_api_starts_as_quietly_as_the_commands():
    """`SpeakerEncoder()` and one embed_file in a script print nothing at all on this CPU
    machine, in ONNX Runtime and in Keras (no cudart_stub / cuInit / absl lines, which
    come before TF_CPP_MIN_LOG_LEVEL is read); DEEP_SPEAKER_VERBOSE=1 lets them through."""
    demo = REPO / "deep-speaker-data" / "demo" / "VCTK-Corpus" / "wav48" / "p225" / "p225_001.flac"
    code = ("import os, sys\n"
            "from deep_speaker import SpeakerEncoder\n"
            f"embedding = SpeakerEncoder(runtime=sys.argv[1]).embed_file({str(demo)!r})\n"
            "sys.exit(0 if embedding.shape == (512,) else 3)\n")
    env = {k: v for k, v in os.environ.items() if k not in _TF_LOGGING_ENV}
    for runtime in ("onnx", "keras"):
        quiet = subprocess.run([sys.executable, "-c", code, runtime], capture_output=True, text=True, cwd=REPO,
                               env=env, timeout=180)
        assert quiet.returncode == 0, quiet.stderr
        assert (quiet.stdout, quiet.stderr) == ("", ""), runtime
    loud = subprocess.run([sys.executable, "-c", code, "keras"], capture_output=True, text=True, cwd=REPO,
                          env={**env, "DEEP_SPEAKER_VERBOSE": "1"}, timeout=180)
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr.strip(), "expected TensorFlow's start-up lines with DEEP_SPEAKER_VERBOSE=1"


def _fake_tensorflow(folder: Path, fails: bool) -> Path:
    """A `tensorflow` package that writes to file descriptor 2 at import, as the real one
    does before it reads TF_CPP_MIN_LOG_LEVEL, and then fails or not."""
    package = folder / "tensorflow"
    package.mkdir(parents=True)
    body = "import os\nos.write(2, b'fake tensorflow: libcudart.so.12 not found\\n')\n"
    body += "raise ImportError('fake tensorflow: broken install')\n" if fails else ""
    (package / "__init__.py").write_text(body)
    return folder


def test_the_quiet_import_keeps_a_failing_import_s_output_and_the_user_s_log_level(tmp_path):
    """A TensorFlow that fails to import: SpeakerEncoder() raises the real error, and what
    TensorFlow wrote to stderr before failing is replayed. One that imports: its noise is
    gone, and a TF_CPP_MIN_LOG_LEVEL the user exported is left as it was."""
    env = {k: v for k, v in os.environ.items() if k not in _TF_LOGGING_ENV}
    broken = _fake_tensorflow(tmp_path / "broken", fails=True)
    code = "from deep_speaker import SpeakerEncoder\nSpeakerEncoder(runtime='keras')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**env, "PYTHONPATH": str(broken)})
    assert done.returncode == 1
    assert "fake tensorflow: libcudart.so.12 not found" in done.stderr
    assert "ImportError: fake tensorflow: broken install" in done.stderr

    working = _fake_tensorflow(tmp_path / "working", fails=False)
    code = ("import os\nfrom deep_speaker.tf_quiet import import_tensorflow\n"
            "print(import_tensorflow().__file__, os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n")
    for preset, level in ((None, "3"), ("1", "1")):
        run_env = {**env, "PYTHONPATH": str(working)}
        if preset is not None:
            run_env["TF_CPP_MIN_LOG_LEVEL"] = preset
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                              env=run_env)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert done.stdout.split() == [str(working / "tensorflow" / "__init__.py"), level]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**env, "PYTHONPATH": str(working), "DEEP_SPEAKER_VERBOSE": "1"})
    assert done.returncode == 0 and "fake tensorflow: libcudart.so.12 not found" in done.stderr
    assert done.stdout.split()[1] == "None"  # and no log level of ours
