"""Speaker identification: identify.py and SpeakerEncoder.enroll/identify on the
vendored demo corpus with the pretrained model; enrolments of another model or
other settings are refused in one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.commands import identify
from deep_speaker.identification import Enrolment, EnrolmentError, identification_accuracy

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "deep-speaker-data" / "demo"
SPEAKER_DIRS = {**{s: DEMO / "VCTK-Corpus" / "wav48" / s for s in ("p225", "p226", "p227", "p239")},
                "PhilippeRemy": DEMO / "samples" / "PhilippeRemy"}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The demo speakers with several files: all but the last enrolled, the last held out."""
    root = tmp_path_factory.mktemp("speakers")
    held_out = {}
    for speaker, folder in SPEAKER_DIRS.items():
        files = sorted(p for p in folder.iterdir() if p.suffix in (".flac", ".wav"))
        (root / speaker).mkdir()
        for path in files[:-1]:
            shutil.copyfile(path, root / speaker / path.name)
        held_out[speaker] = str(files[-1])
    return root, held_out


@pytest.fixture(scope="module")
def enrolment_file(split, tmp_path_factory) -> Path:
    root, _ = split
    output = tmp_path_factory.mktemp("enrolment") / "enrolment.npz"
    assert identify.main(["--enroll", str(root), "--output", str(output)]) == 0
    return output


def run(capsys, *argv) -> tuple[int, str, str]:
    code = identify.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_enrolment_holds_speakers_model_and_settings(enrolment_file):
    enrolment = Enrolment.load(enrolment_file)
    assert sorted(enrolment.speakers) == sorted(SPEAKER_DIRS)
    assert enrolment.embeddings.shape == (5, 512)
    np.testing.assert_allclose(np.linalg.norm(enrolment.embeddings, axis=1), 1.0, atol=1e-5)
    assert dict(zip(enrolment.speakers, enrolment.utterances))["p239"] == 11
    assert len(enrolment.model["sha256"]) == 64 and enrolment.model["path"].endswith("embedding.keras")
    assert enrolment.settings["sample_rate_hz"] == 8000 and enrolment.settings["trim"] == "percentile"


def test_identify_names_the_held_out_utterances(enrolment_file, split, capsys):
    _, held_out = split
    code, out, err = run(capsys, "--enrolment", enrolment_file, "--files", *held_out.values(), "--json")
    assert code == 0, err
    document = json.loads(out)
    results = {r["file"]: r for r in document["results"]}
    named = [results[path]["speaker"] == speaker for speaker, path in held_out.items()]
    in_top3 = [speaker in [m["speaker"] for m in results[path]["matches"]] for speaker, path in held_out.items()]
    assert sum(named) >= 4 and all(in_top3), results
    for result in results.values():
        scores = [m["similarity"] for m in result["matches"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)

    code, out, err = run(capsys, "--enrolment", enrolment_file, "--files", held_out["p239"], "--top_k", "2")
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"{held_out['p239']}\tp239\t(p239 0.") and line.count(",") == 1


def test_below_the_threshold_is_unknown(enrolment_file, split, capsys):
    _, held_out = split
    code, out, _ = run(capsys, "--enrolment", enrolment_file, "--files", held_out["p225"], "--threshold", "0.9999")
    assert code == 0
    assert "threshold: cosine similarity 0.9999" in out
    assert out.strip().splitlines()[-1].split("\t")[1] == "unknown"


def _altered(enrolment_file: Path, tmp_path: Path, **changes) -> Path:
    enrolment = Enrolment.load(enrolment_file)
    for key, value in changes.items():
        target = enrolment.model if key == "sha256" else enrolment.settings
        target[key] = value
    return enrolment.save(tmp_path / "altered.npz")


@pytest.mark.parametrize("changes, reason", [
    ({"sha256": "0" * 64}, "was made with another model"),
    ({"sample_rate_hz": 16000}, "was made with other feature settings (sample_rate_hz 16000 there, 8000 here)"),
    ({"trim": "energy"}, "was made with other feature settings (trim 'energy' there, 'percentile' here)"),
])
def test_an_enrolment_of_another_model_or_settings_is_refused_in_one_line(enrolment_file, split, tmp_path, capsys,
                                                                           changes, reason):
    altered = _altered(enrolment_file, tmp_path, **changes)
    code, _, err = run(capsys, "--enrolment", altered, "--files", split[1]["p225"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {altered} ") and reason in lines[0], err


def test_a_damaged_enrolment_file_and_bad_usage_are_one_line(tmp_path, split, capsys):
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(capsys, "--enrolment", damaged, "--files", split[1]["p225"])
    assert code == 2 and err.strip().startswith(f"error: {damaged}: not a deep-speaker enrolment"), err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        identify.main(["--enroll", str(split[0])])
    assert exit_.value.code == 2
    assert "--enroll needs --output" in capsys.readouterr().err


def test_api_enroll_and_identify(split):
    from deep_speaker.encoder import SpeakerEncoder

    root, held_out = split
    encoder = SpeakerEncoder()
    speakers = {name: sorted((root / name).iterdir())[:2] for name in ("p225", "p239", "PhilippeRemy")}
    enrolment = encoder.enroll(speakers)
    assert enrolment.speakers == ["p225", "p239", "PhilippeRemy"] and enrolment.utterances == [2, 2, 2]
    one = encoder.identify(held_out["p239"], enrolment, top_k=2)
    assert one.query == held_out["p239"] and len(one.matches) == 2 and one.speaker == "p239"
    several = encoder.identify([held_out["p239"], held_out["PhilippeRemy"]], enrolment, threshold=0.9999)
    assert [r.speaker for r in several] == ["unknown", "unknown"]
    as_vectors = encoder.identify(encoder.embed_files([held_out["p239"]]), enrolment)
    assert as_vectors[0].matches[0].speaker == "p239"
    with pytest.raises(EnrolmentError, match="other feature settings"):
        enrolment.settings["num_fbanks"] = 40
        encoder.identify(held_out["p239"], enrolment)


def test_identification_accuracy_counts_ranks():
    rows = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.6, 0.5, 0], [0, 0, 1], [0, 0.2, 0.9]], np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    result = identification_accuracy(rows, ["a", "a", "b", "b", "c", "c"], ks=(1, 2))
    assert result["identification_speakers"] == 3 and result["identification_queries"] == 3
    assert result["top1_accuracy"] == pytest.approx(2 / 3) and result["top2_accuracy"] == 1.0
