"""What every command shares: default paths, logging, and turning expected
errors into one clear line with exit code 2.

Expected errors are the types of `deep_speaker.errors` (bad input, mismatched
settings, ...) and OSError (a missing, unreadable or unwritable file): one line,
exit 2. Anything else is a bug: one line naming the file its traceback was
written to, exit 1; `--verbose` prints the traceback of every error instead.
Nothing here imports numpy, soundfile or TensorFlow, so `--help` stays fast and
works on a half-installed machine."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from typing import NoReturn

from deep_speaker.config import SCORING_ENVIRONMENT
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.paths import DATA_ROOT
from deep_speaker.tf_quiet import quiet_tensorflow_import

DEFAULT_CACHE_DIR = DATA_ROOT / "cache"
DEFAULT_CHECKPOINT_DIR = DATA_ROOT / "checkpoints"
EXIT_USAGE = 2  # expected errors and usage errors
EXIT_BUG = 1  # an unexpected exception


class CommandError(DeepSpeakerError):
    """An expected failure: printed as one line, exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, unless its help already explains it."""

    def _get_help_string(self, action):
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (no usage block), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {_one_line(message)} (see {self.prog} --help)\n")


def parser(description: str) -> argparse.ArgumentParser:
    return _Parser(description=description, formatter_class=_HelpFormatter)


def _one_line(text) -> str:
    """A message on one line: an exception text may span several."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def add_model_arguments(p: argparse.ArgumentParser, runtime: bool = True) -> None:
    """--checkpoint_dir and --checkpoint, shared by every command that scores, and
    --runtime (`deep_speaker.runtimes`) unless `runtime` is False."""
    p.add_argument("--checkpoint_dir", default=str(DEFAULT_CHECKPOINT_DIR),
                   help="where training wrote its stages (best triplet, then softmax checkpoint is used)")
    p.add_argument("--checkpoint", default=None,
                   help="a .keras model file with its config.json beside it (default: the best checkpoint in "
                        "--checkpoint_dir, else the pretrained model shipped with deep-speaker)")
    if runtime:
        p.add_argument("--runtime", choices=("auto", "onnx", "keras"), default="auto",
                       help="what runs the model: onnx (ONNX Runtime on the .onnx export beside the model, no "
                            "TensorFlow), keras (TensorFlow; needs deep-speaker[train]), auto: onnx when that export "
                            "of this model file is there, else keras")


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. p225,p226")
    return items


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def checked_config(config):
    """`config` after its range checks; an out-of-range value is a one-line CommandError."""
    try:
        return config.validate()
    except ValueError as error:
        raise CommandError(str(error)) from None


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; unless `verbose`, keep TensorFlow's C++ start-up noise out of
    it (cudart_stub, cuInit, oneDNN, "All log messages before absl::InitializeLog()"
    on a CPU machine) by `deep_speaker.tf_quiet`, the same mechanism as the API's:
    TF_CPP_MIN_LOG_LEVEL=3 (a value the user set wins) and stderr sent elsewhere
    while TensorFlow is imported, since some of its messages come before that."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_tensorflow_import(verbose)


def exit_skipping_teardown(code: int | None) -> NoReturn:
    """Leave the process with `code` once stdout, stderr and the log handlers
    are flushed, without the interpreter's teardown. After TensorFlow has run,
    that teardown (module and thread clean-up) costs about 1.3 s of wall time
    on 2 cores (bench/score.py), and a finished scoring command needs none of
    it: everything it writes is written and closed before main() returns."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing left to say
            pass
    os._exit(code if isinstance(code, int) else 0)



def quick_exit_entry_point(main):
    """The console entry point of a scoring command: SCORING_ENVIRONMENT (before
    TensorFlow is imported), main(), then exit_skipping_teardown."""
    def cli() -> None:
        for name, value in SCORING_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        exit_skipping_teardown(main())
    return cli


def run(body, argv=None) -> int:
    """Call body(argv): expected failures (`deep_speaker.errors`, OSError) become
    one line on stderr and exit code 2; anything else is a bug, reported as one
    line naming the file that holds its traceback, exit code 1. With --verbose
    in argv every error's traceback is printed too."""
    verbose = "--verbose" in (sys.argv[1:] if argv is None else [str(a) for a in argv])
    try:
        return body(argv) or 0
    except DeepSpeakerError as error:
        return _expected(error, _one_line(error), verbose)
    except BrokenPipeError:  # the reader of stdout left (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at flush
        return 1
    except IsADirectoryError as error:
        return _expected(error, f"{error.filename or error}: is a directory, not a file", verbose)
    except OSError as error:  # a missing or unreadable file, disk full, read-only folder, ...
        message = f"{error.filename or ''}: {error.strerror or error}".removeprefix(": ")
        return _expected(error, _one_line(message), verbose)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: never dressed up as the user's mistake
        return _report_bug(error, verbose)


def _expected(error: BaseException, line: str, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {line}", file=sys.stderr)
    return EXIT_USAGE


def _report_bug(error: BaseException, verbose: bool) -> int:
    """Print the traceback (verbose) or write it to a file and name it, so one
    line still says what happened and where to look."""
    text = "".join(traceback.format_exception(error))
    summary = f"internal error {type(error).__name__}: {_one_line(error) or '(no message)'}"
    if verbose:
        sys.stderr.write(text)
        print(f"error: {summary} (a bug in deep-speaker)", file=sys.stderr)
        return EXIT_BUG
    try:
        fd, name = tempfile.mkstemp(prefix=f"deep-speaker-traceback-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{' '.join(sys.argv)}\n\n{text}")
        where = f"traceback in {name}"
    except OSError:
        sys.stderr.write(text)
        where = "traceback above"
    print(f"error: {summary} (a bug in deep-speaker; {where}; --verbose prints it)", file=sys.stderr)
    return EXIT_BUG
