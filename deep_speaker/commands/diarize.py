"""diarize.py: who spoke when in recordings (speaker diarization).

    diarize.py meeting.wav [more files or globs] [--rttm OUT_DIR] [--num_speakers N | --min_speakers A
               --max_speakers B] [--enrolment enrolment.npz] [--plot OUT_DIR] [--json]
    arecord -f S16_LE -r 16000 -c 1 | diarize.py --stream - --rate 16000   # online: turns as they end
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from deep_speaker.commands.common import (CommandError, add_model_arguments, parser, positive_int,
                                          quick_exit_entry_point, run, setup_logging)


def build_parser():
    p = parser("Speaker diarization: who spoke when in each recording. Prints each recording's turns (start, end, "
               "speaker), writes standard RTTM files with --rttm and timeline pictures with --plot. Speakers are "
               "speaker_1, speaker_2, ... in order of first appearance, or their enrolled names with --enrolment.")
    p.add_argument("files", nargs="+", metavar="FILE|GLOB",
                   help="recordings (any length, any rate from 8 kHz); with --stream, '-' is raw audio on stdin")
    p.add_argument("--stream", action="store_true",
                   help="online diarization: print each turn as soon as it is final (a second or a few after it ends), "
                        "speakers decided as they come (docs/diarization.md, 'Online'); the count is never given")
    p.add_argument("--rate", type=positive_int, default=16000,
                   help="with --stream -: the sample rate of the raw signed 16-bit mono samples on stdin (16000)")
    p.add_argument("--rttm", metavar="OUT_DIR", help="write <name>.rttm per recording into this folder")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--num_speakers", type=positive_int, default=None,
                       help="exactly this many speakers (default: estimated from the recording)")
    p.add_argument("--min_speakers", type=positive_int, default=None, help="at least this many speakers")
    p.add_argument("--max_speakers", type=positive_int, default=None, help="at most this many speakers")
    p.add_argument("--enrolment", metavar="ENROLMENT.npz",
                   help="an enrolment written by identify.py --enroll: a speaker that matches an enrolled one at the "
                        "naming threshold (cosine 0.68; 0.8 with --stream, where a name comes once the speaker is "
                        "recognised; docs/diarization.md) takes its name")
    p.add_argument("--plot", metavar="OUT_DIR",
                   help="write <name>.png per recording: a timeline, one lane per speaker (needs the eval extra)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of prose (with --stream: first one JSON line per turn, as "
                        "each becomes final, and {speaker, name} when an enrolled speaker is recognised)")
    add_model_arguments(p)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    return run(_main, argv)


cli = quick_exit_entry_point(main)  # scripts and console entry points


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.num_speakers is not None and (args.min_speakers is not None or args.max_speakers is not None):
        p.error("--num_speakers goes alone, not with --min_speakers/--max_speakers")
    if args.min_speakers is not None and args.max_speakers is not None and args.min_speakers > args.max_speakers:
        p.error("--min_speakers is more than --max_speakers")
    if args.stream and (args.num_speakers is not None or args.min_speakers is not None or args.plot):
        p.error("--stream decides speakers as they come: no --num_speakers, --min_speakers or --plot")
    if "-" in args.files and (not args.stream or len(args.files) > 1):
        p.error("'-' (raw audio on stdin) goes alone, with --stream")
    setup_logging(args.verbose)
    if args.plot:
        from deep_speaker.extras import require_extra

        require_extra("eval", "diarize.py --plot (its timeline pictures)", ["matplotlib"])

    from deep_speaker.audio import AudioError
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.commands.get_emb import expand_files
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.identification import Enrolment
    from deep_speaker.scoring import ScoringError

    enrolment = Enrolment.load(args.enrolment) if args.enrolment else None  # a bad file fails before the model loads
    paths = ["-"] if args.files == ["-"] else expand_files(args.files)
    resolved = resolve_model(args.checkpoint, args.checkpoint_dir)
    encoder = SpeakerEncoder(resolved.path, runtime=args.runtime)
    if not args.json:
        print(resolved.line(encoder.runtime), flush=True)
    if enrolment is not None:
        from deep_speaker.identification import enrolment_settings

        enrolment.check_compatible(encoder.model_identity, enrolment_settings(encoder.config), args.enrolment)
    results, failed = [], []
    for path in paths:
        try:
            if args.stream:
                result = _diarize_online(encoder, path, args, enrolment)
            else:
                result = encoder.diarize(path, num_speakers=args.num_speakers, min_speakers=args.min_speakers,
                                         max_speakers=args.max_speakers, enrolment=enrolment)
        except (AudioError, ScoringError, OSError) as error:
            reason = _one_line(error, path)
            failed.append((path, reason))
            print(f"skipped {path}: {reason}", file=sys.stderr, flush=True)
            continue
        written = []
        if args.rttm:
            written.append(str(result.to_rttm(Path(args.rttm) / f"{result.uri}.rttm")))  # a file's stem, or stdin
        if args.plot:
            from deep_speaker.plots import plot_diarization

            written.append(str(plot_diarization(result, Path(args.plot) / f"{Path(path).stem}.png")))
        results.append((path, result, written))
        if not args.json:
            _print(path, result, written, turns=not args.stream)
    if args.json:
        print(json.dumps({"model": str(resolved.path),
                          "results": [dict(file=path, **result.to_dict(), written=written)
                                      for path, result, written in results],
                          "skipped": [{"file": path, "reason": reason} for path, reason in failed]}))
    if not results:
        raise CommandError(f"none of the {len(paths)} file(s) could be diarized")
    return 0


def _diarize_online(encoder, path: str, args, enrolment):
    """A file or stdin through the online diarizer, each turn printed (a JSON line with --json) once final."""
    from deep_speaker.long_audio import stream_audio

    if path == "-":
        stream = encoder.diarize_stream(args.rate, enrolment, max_speakers=args.max_speakers, uri="stdin")
        blocks = _stdin_blocks(args.rate)
    else:
        rate = encoder.config.sample_rate_hz
        stream = encoder.diarize_stream(rate, enrolment, max_speakers=args.max_speakers, uri=Path(path).stem)
        blocks = stream_audio(path, rate)  # (blocks of 5 s: turns come as fast as the file is read)
    if not args.json:
        print(f"{path}: turns as they end (start, end, speaker):", flush=True)
    for block in _until_interrupted(blocks):
        _print_turns(stream.push(block), args.json)
        _print_names(stream.new_names(), args.json)
    _print_turns(stream.close(), args.json)
    _print_names(stream.new_names(), args.json)
    return stream.diarization()


def _until_interrupted(blocks):
    """The blocks, until they end or Ctrl-C comes while waiting for the next one (a live stream's usual end:
    what was heard is still diarized). Ctrl-C during the work on a block stops the command as usual."""
    blocks = iter(blocks)
    while True:
        try:
            block = next(blocks)
        except (StopIteration, KeyboardInterrupt):
            return
        yield block


def _stdin_blocks(rate: int, seconds: float = 0.25):
    """Raw signed 16-bit little-endian mono samples from stdin, as float32 blocks of `seconds`."""
    import numpy as np

    size = 2 * max(1, int(rate * seconds))
    carry = b""
    while True:
        chunk = sys.stdin.buffer.read1(size) if hasattr(sys.stdin.buffer, "read1") else sys.stdin.buffer.read(size)
        if not chunk:
            return
        data, carry = carry + chunk, b""
        if len(data) % 2:
            data, carry = data[:-1], data[-1:]
        yield np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def _print_turns(turns, as_json: bool) -> None:
    for start, end, label in turns:
        print(json.dumps({"start": start, "end": end, "speaker": label}) if as_json
              else f"  {start:9.2f} {end:9.2f}  {label}", flush=True)


def _print_names(names, as_json: bool) -> None:
    for label, name in names:  # an enrolled speaker recognised: its turns, past and to come, are this name's
        print(json.dumps({"speaker": label, "name": name}) if as_json else f"  {label} is {name}", flush=True)


def _print(path: str, result, written: list[str], turns: bool = True) -> None:
    if not result.segments:
        print(f"{path}: no speakers: {result.reason}")
    else:
        print(f"{path}: {result.num_speakers} speaker(s) in {result.duration_s:.1f} s "
              f"({', '.join(result.speakers)})")
        for start, end, label in result.segments if turns else []:
            print(f"  {start:9.2f} {end:9.2f}  {label}")
    for item in written:
        print(f"  written {item}")


def _one_line(error: BaseException, path: str) -> str:
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, OSError) and not text.startswith(path):
        text = error.strerror or text
    return text.removeprefix(f"{path}: ")
