"""What every command shares: default paths, logging, and turning expected
errors into one clear line with exit code 2."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

DATA_ROOT = Path("deep-speaker-data")  # the seed's data root, relative to where commands run
DEFAULT_CACHE_DIR = DATA_ROOT / "cache"
DEFAULT_CHECKPOINT_DIR = DATA_ROOT / "checkpoints"
EXIT_USAGE = 2


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


class AlreadyReported(Exception):
    """A failure whose one error line is already on stderr (a pipeline step's
    command printed it): exit with `code`, print nothing more."""

    def __init__(self, code: int, note: str = ""):
        super().__init__(note or f"exit code {code}")
        self.code = code


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


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint_dir and --checkpoint, shared by every command that scores."""
    p.add_argument("--checkpoint_dir", default=str(DEFAULT_CHECKPOINT_DIR),
                   help="where training wrote its stages (best triplet, then softmax checkpoint is used)")
    p.add_argument("--checkpoint", default=None,
                   help="a .keras model file with its config.json beside it (default: the best checkpoint in "
                        "--checkpoint_dir, else the pretrained model shipped with deep-speaker)")


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. p225,p226")
    return items


def comma_floats(text: str) -> list[float]:
    """'0.9,1.1' -> [0.9, 1.1], each between 0.5 and 2."""
    values = []
    for item in comma_list(text):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a number") from None
        if not 0.5 <= value <= 2.0:
            raise argparse.ArgumentTypeError(f"{item!r}: speed factors must lie in 0.5-2")
        values.append(value)
    return values


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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter


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


# Scoring commands run each utterance once, at its own length. TensorFlow's oneDNN
# convolutions set up a primitive per new input shape (about 45 ms per length at
# width 1.0), so they run slower cold than its own (Eigen) convolutions, which are as
# fast warm for one utterance at a time (bench/score.py). A value the user set wins.
SCORING_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def quick_exit_entry_point(main):
    """The console entry point of a scoring command: SCORING_ENVIRONMENT (before
    TensorFlow is imported), main(), then exit_skipping_teardown."""
    def cli() -> None:
        for name, value in SCORING_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        exit_skipping_teardown(main())
    return cli


def run(body, argv=None) -> int:
    """Call body(argv) and map expected failures to one line on stderr, exit 2."""
    from deep_speaker.audio import AudioError

    try:
        return body(argv) or 0
    except AlreadyReported as reported:
        return reported.code
    except (CommandError, AudioError, FileNotFoundError, ValueError, PermissionError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader of stdout left (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at flush
        return 1
    except OSError as error:  # disk full, read-only folder, ...
        message = f"{error.filename or ''}: {error.strerror or error}".removeprefix(": ")
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
