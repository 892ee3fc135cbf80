"""The one-command pipeline on the vendored demo corpus, at tiny settings."""
import json
import re
import subprocess
from pathlib import Path


from deep_speaker.commands import pipeline

REPO = Path(__file__).resolve().parents[1]


def test_run_pipeline_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(REPO / "scripts" / "run_pipeline.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_demo_corpus_is_vendored_with_its_licence():
    demo = REPO / "deep-speaker-data" / "demo"
    assert (demo / "LICENSE.md").is_file()
    assert len(list((demo / "VCTK-Corpus" / "wav48").glob("p*/p*_*.flac"))) == 34
    assert len(list((demo / "samples" / "PhilippeRemy").glob("*.wav"))) == 4
    size = sum(p.stat().st_size for p in demo.rglob("*") if p.is_file())
    assert size <= 20 * 1024 * 1024


def test_pipeline_runs_end_to_end_and_reruns_cheaply(tmp_path, capsys, monkeypatch):
    data_root = REPO / "deep-speaker-data"
    out = tmp_path / "run"
    assert pipeline.main(["--quick", "--data_root", str(data_root), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SAN p225 vs p226" in printed and "SAP p225 vs p225" in printed
    assert "SAN PhilippeRemy vs p225" in printed
    results = json.loads((out / "pipeline_results.json").read_text())
    trained = results["trained"]
    kinds = [c["kind"] for c in trained["comparisons"]]
    assert kinds.count("SAN") == 2 and kinds.count("SAP") == 3
    # different utterances on both sides (SAP on disjoint halves): never 0 by construction, as the seed's SAP was
    assert all(0.0 < c["distance"] < 2.0 for c in trained["comparisons"]), trained["comparisons"]
    for name in ("det_curve.png", "score_histograms.png", "similarity_matrix.png", "embeddings_2d.png",
                 "metrics.json", "scores.tsv"):
        assert (out / "evaluation_trained" / name).stat().st_size > 0
    assert (out / "embedding_p225_trained.npy").is_file()
    assert (out / "checkpoints" / "triplet" / "best.keras").is_file()
    # The unseen speakers never train.
    inputs = {p.stem for p in (out / "cache" / "inputs").glob("*.pkl")}
    assert not inputs & {"p225", "p226", "PhilippeRemy"} and len(inputs) == 12

    # A rerun skips every finished stage.
    assert pipeline.main(["--quick", "--data_root", str(data_root), "--output_dir", str(out)]) == 0
    rerun = capsys.readouterr().out
    assert "0 files cached" in rerun and "already trained" in rerun and "0 speakers written" in rerun


def test_pipeline_without_any_corpus_says_what_to_do(tmp_path, capsys):
    assert pipeline.main(["--quick", "--data_root", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo corpus missing" in err[0]


def test_no_package_module_imports_the_commands_layer():
    """commands/ is a thin layer on top: the package (pipeline included) calls
    package functions, never a command's argv."""
    package = REPO / "deep_speaker"
    offenders = [str(path.relative_to(REPO)) for path in package.rglob("*.py")
                 if "commands" not in path.relative_to(package).parts
                 and re.search(r"^\s*(from|import) deep_speaker\.commands", path.read_text(encoding="utf-8"), re.M)]
    assert offenders == []
