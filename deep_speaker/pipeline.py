"""The seed's VCTK workflow end to end, in one call (scripts/run_pipeline.sh).

cache -> training inputs -> softmax pre-training -> triplet training -> SAN/SAP
on the unseen speakers (and the extra speaker) -> an embedding -> evaluation
plots, with the model just trained and with the pretrained model shipped in the
package. Every stage skips work that is already complete, so a rerun is cheap.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class PipelinePlan:
    corpus: Path  # the corpus folder given to stage 1
    extra: Path | None  # folder of extra speakers (samples/<Name>/), added with --update_cache
    unseen: list[str]  # speakers kept out of training, scored by comp_cos
    model_settings: dict  # Config fields shared by both training stages (width, window length)
    description: str
    extra_speaker: str | None = None


# Config fields of each training run the pipeline makes (see deep_speaker.config.Config).
FULL_VCTK_MODEL = {"width": 1.0}
DEMO_MODEL = {"width": 0.125, "frames": 160}
QUICK_MODEL = {"width": 0.125, "frames": 100}
# 12 training speakers: the cosine AM-softmax head with SpecAugment keeps the embedding space from
# collapsing (the plain softmax head left all unseen speakers within 0.01 of each other).
SOFTMAX_SCHEDULE = {"epochs": 12, "steps_per_epoch": 30, "batch_size": 32, "head": "amsoftmax",
                    "spec_augment": True, "lr_schedule": "cosine"}
TRIPLET_SCHEDULE = {"epochs": 2, "steps_per_epoch": 20, "batch_size": 16}
QUICK_SOFTMAX_SCHEDULE = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 8}
QUICK_TRIPLET_SCHEDULE = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8}


def plan_pipeline(data_root: Path, quick: bool) -> PipelinePlan:
    """Full VCTK when present (the seed's defaults), else the vendored demo corpus."""
    for name in ("VCTK-Corpus", "VCTK-Corpus-0.92"):
        corpus = data_root / name
        if corpus.is_dir() and any(corpus.glob("wav48*/p*")):
            extra = data_root / "samples" if (data_root / "samples").is_dir() else None
            return PipelinePlan(corpus, extra, ["p363", "p364"], FULL_VCTK_MODEL,
                                f"full VCTK at {corpus} (105 training speakers, p363/p364/p374/p376 unseen)",
                                _first_speaker(extra))
    demo = data_root / "demo"
    if not (demo / "VCTK-Corpus").is_dir():
        raise FileNotFoundError(f"{demo}/VCTK-Corpus: demo corpus missing (it ships with the repository); "
                                f"or put VCTK in {data_root}/VCTK-Corpus, or pass --download")
    extra = data_root / "samples" if (data_root / "samples").is_dir() else demo / "samples"
    return PipelinePlan(demo / "VCTK-Corpus", extra, ["p225", "p226"], QUICK_MODEL if quick else DEMO_MODEL,
                        f"demo corpus {demo} (VCTK excerpt, 12 training speakers, p225/p226 unseen)",
                        _first_speaker(extra))


def _first_speaker(extra: Path | None) -> str | None:
    if extra is None:
        return None
    names = sorted(p.name for p in extra.iterdir() if p.is_dir())
    return names[0] if names else None


@dataclass
class PipelineReport:
    lines: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    def add(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)


@contextmanager
def _step(what: str):
    """Log which step stopped the pipeline; the error itself goes up unchanged
    (one line from the command that called the pipeline)."""
    log.info("step: %s", what)
    try:
        yield
    except BaseException:
        log.info("pipeline stopped at step '%s'", what)
        raise


def run_pipeline(data_root: Path, output_dir: Path, quick: bool = False, download: bool = False) -> PipelineReport:
    from deep_speaker.config import Config
    from deep_speaker.parallel import default_workers
    from deep_speaker.preprocessing import audio_settings_of_run, preprocess
    from deep_speaker.training import train_stage

    data_root, output_dir = Path(data_root), Path(output_dir)
    report = PipelineReport()
    if download and not (data_root / "VCTK-Corpus").is_dir():
        from deep_speaker.download import DEFAULT_VERSION, download_vctk

        with _step("download VCTK"):
            result = download_vctk(DEFAULT_VERSION, data_root)
        report.add(f"VCTK {DEFAULT_VERSION} ready in {result.folder} ({result.file_count} files)")
    plan = plan_pipeline(data_root, quick)
    report.add(f"pipeline: {plan.description}; outputs in {output_dir}")
    cache, checkpoints = output_dir / "cache", output_dir / "checkpoints"
    workers = default_workers()

    mode = "update" if (cache / "audio_cache_pkl").is_dir() else "regenerate"
    data_config = Config().override(**audio_settings_of_run(cache, {}, mode))
    with _step("audio cache"):
        preprocess(cache, data_config, cache_mode=mode, audio_dirs=[plan.corpus], workers=workers,
                   report=report.add)
    if plan.extra is not None:
        with _step("extra speakers"):
            preprocess(cache, data_config, cache_mode="update", audio_dirs=[plan.extra], workers=workers,
                       report=report.add)
    unseen = list(plan.unseen) + ([plan.extra_speaker] if plan.extra_speaker else [])
    with _step("training inputs"):
        preprocess(cache, data_config, generate_inputs=True, unseen_speakers=unseen, workers=workers,
                   report=report.add)

    schedules = ((QUICK_SOFTMAX_SCHEDULE, QUICK_TRIPLET_SCHEDULE) if quick
                 else (SOFTMAX_SCHEDULE, TRIPLET_SCHEDULE))
    for stage, schedule, what in (("softmax", schedules[0], "softmax pre-training"),
                                  ("triplet", schedules[1], "triplet training")):
        config = Config().override(**plan.model_settings, **schedule).validate()
        with _step(what):
            result = train_stage(stage, config, cache, checkpoints)
        for line in result.lines():
            report.add(line)

    _score(report, plan, cache, output_dir, checkpoint_dir=checkpoints, label="trained here")
    from deep_speaker.checkpoints import pretrained_model

    pretrained = pretrained_model()
    if pretrained.is_file():
        _score(report, plan, cache, output_dir, checkpoint=pretrained, label="pretrained")
    else:
        report.add(f"pretrained model not found at {pretrained}: skipped")
    report.add(f"done: cache {cache}, checkpoints {checkpoints}, embeddings and evaluation plots in {output_dir}")
    from deep_speaker.io_utils import atomic_write_text

    atomic_write_text(output_dir / "pipeline_results.json", json.dumps(report.results, indent=2))
    return report


def _score(report: PipelineReport, plan: PipelinePlan, cache: Path, output_dir: Path, label: str,
           checkpoint_dir: Path | None = None, checkpoint: Path | None = None) -> None:
    """SAN/SAP on the unseen speakers, the extra speaker, one embedding, and an evaluation."""
    import numpy as np

    from deep_speaker.corpus import discover_utterances
    from deep_speaker.embeddings_io import write_embeddings
    from deep_speaker.evaluation import Trials, evaluate_trials
    from deep_speaker.metrics import all_pairs_trials
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.checkpoints import resolve_model
    from deep_speaker.scoring import compare_speakers, embed_cached_speaker

    resolved = resolve_model(checkpoint, checkpoint_dir)
    embedder = SpeakerEncoder(resolved.path)  # the API every scoring command is built on
    first, second = plan.unseen[:2]
    pairs = [(first, second), (first, first), (second, second)]
    if plan.extra_speaker:
        pairs += [(plan.extra_speaker, first), (plan.extra_speaker, plan.extra_speaker)]
    results = {"model": str(resolved.path), "comparisons": []}
    report.add(f"[{label}] {resolved.line(embedder.runtime)}")
    for a, b in pairs:
        comparison = compare_speakers(embedder, cache, a, b)
        results["comparisons"].append(comparison.to_dict())
        report.add(f"[{label}] {comparison.kind} {a} vs {b}: distance {comparison.distance:.4f} "
                   f"({'+'.join(map(str, comparison.counts))} utterances, {comparison.seconds:.1f} s)")
    tag = "trained" if checkpoint is None else "pretrained"
    embedding_path = output_dir / f"embedding_{first}_{tag}.npy"
    write_embeddings(embedding_path, embed_cached_speaker(embedder, cache, first)[None, :], [first])
    report.add(f"[{label}] embedding of {first} written to {embedding_path}")

    scored = set(plan.unseen) | ({plan.extra_speaker} if plan.extra_speaker else set())
    dirs = [plan.corpus] + ([plan.extra] if plan.extra else [])
    utterances = [u for u in discover_utterances(dirs) if u.speaker_id in scored]
    i, j, labels = all_pairs_trials([u.speaker_id for u in utterances])
    trials = Trials([str(u.path) for u in utterances], [u.speaker_id for u in utterances], i, j, labels)
    metrics = evaluate_trials(embedder, trials, output_dir / f"evaluation_{tag}", plot_embeddings=True)
    results["evaluation"] = metrics
    report.add(f"[{label}] evaluation on unseen speakers: EER {100 * metrics['eer']:.2f} %, "
               f"minDCF(0.01) {metrics['min_dcf_0.01']:.3f}; plots in {output_dir / f'evaluation_{tag}'}")
    san = [c["distance"] for c in results["comparisons"] if c["kind"] == "SAN"]
    sap = [c["distance"] for c in results["comparisons"] if c["kind"] == "SAP"]
    report.add(f"[{label}] mean SAN {np.mean(san):.4f} vs mean SAP {np.mean(sap):.4f}: "
               f"{'SAN > SAP as expected' if np.mean(san) > np.mean(sap) else 'SAN <= SAP: the model does not separate these speakers'}")
    report.results[tag] = results
