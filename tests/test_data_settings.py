"""Data settings travel with the model, and the 2018 cache is read as it is (issue 17, items 1-3).

- The audio cache records its rate and trim; the training inputs their data settings
  and which ids are pseudo-speakers of whom; training copies them into config.json
  (config_version 2) with every training setting; scoring applies the model's trim
  and refuses a cache cut otherwise, in one line.
- A cache written by the 2018 code (``<stem>_cache.pkl``, (n, 1) float32 arrays,
  float64 blank durations, numpy 1.x pickles) goes through stage 2, training and
  comp_cos.
- A real speaker folder named ``Ann-aug2`` stays a speaker of its own.
- A version-1 config.json (the shipped model's) loads as documented.
- Every data setting is a preprocess.py flag: 40-band, 20 ms-hop inputs train a model
  built for them, its config.json records them and scoring applies them; an update
  of the cache with other audio settings is refused in one line.

Real speech: `vctk_corpus` (vctk-mini, or the same recordings from the vendored demo).
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.audio import read_audio, resample, voice_bounds_energy
from deep_speaker.audio_cache import (AUDIO_CACHE_DIR, SEED_AUDIO_SETTINGS, load_cached_utterance, read_audio_settings,
                                      read_cache_index)
from deep_speaker.commands import comp_cos, preprocess, train_cli
from deep_speaker.config import CONFIG_VERSION, DATA_FIELDS, Config
from deep_speaker.errors import SettingsMismatchError
from deep_speaker.io_utils import load_pickle
from deep_speaker.training_inputs import (load_inputs, merge_augmented_copies, merge_perturbed_speakers,
                                          pseudo_speaker_origins, read_inputs_settings)

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINING = ["--epochs", "1", "--steps_per_epoch", "1", "--batch_size", "4", "--width", "0.125",
                 "--frames", "32"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def call(main, *argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    lines = [line for line in err.getvalue().splitlines() if line.strip() and "\r" not in line and "it/s" not in line
             and "step/s" not in line and "s/step" not in line and not line.startswith(("INFO ", "WARNING "))]
    return code, out.getvalue(), "\n".join(lines)


# --- the 2018 cache ------------------------------------------------------------------------------

def write_seed_record(source: Path, folder: Path, rate: int = 8000) -> Path:
    """One record exactly as the 2018 code's `dump_audio_to_pkl_cache` wrote it (its
    resampler aside): (n, 1) float32 audio, the voice between the first and the
    last (excluded) sample above the 95th percentile of |x|, blank durations floored
    to whole ms as numpy float64, the source path, pickled by Python 3's default
    protocol 3 with numpy 1.x's module path (numpy.core)."""
    samples, source_rate = read_audio(source)
    audio = resample(samples, source_rate, rate).reshape(-1, 1)
    energy = np.abs(audio[:, 0])
    offsets = np.where(energy > np.percentile(energy, 95))[0]
    record = {"audio": audio, "audio_voice_only": audio[offsets[0]:offsets[-1]],
              "left_blank_duration_ms": (1000.0 * offsets[0]) // rate,
              "right_blank_duration_ms": (1000.0 * (len(audio) - offsets[-1])) // rate,
              "filename": str(source)}
    data = pickle.dumps(record, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    target = folder / f"{source.stem}_cache.pkl"
    target.write_bytes(data)
    return target


@pytest.fixture(scope="module")
def seed_cache(vctk_corpus, tmp_path_factory) -> Path:
    """A cache folder holding only what the 2018 code wrote: audio_cache_pkl/<stem>_cache.pkl."""
    cache = tmp_path_factory.mktemp("seed") / "cache"
    folder = cache / AUDIO_CACHE_DIR
    folder.mkdir(parents=True)
    for source in sorted(vctk_corpus.glob("wav48/*/*.wav")):
        write_seed_record(source, folder)
    return cache


def test_a_2018_cache_record_is_read_as_it_is(seed_cache, vctk_corpus):
    path = seed_cache / AUDIO_CACHE_DIR / "p225_001_cache.pkl"
    data = path.read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in data and b"numpy._core" not in data  # a numpy 1.x pickle
    raw = load_pickle(path)
    assert sorted(raw) == ["audio", "audio_voice_only", "filename", "left_blank_duration_ms",
                           "right_blank_duration_ms"]
    assert raw["audio"].shape[1] == 1 and raw["audio"].dtype == np.float32
    assert type(raw["left_blank_duration_ms"]) is np.float64 and raw["left_blank_duration_ms"] % 1 == 0

    record = load_cached_utterance(path)
    assert (record["speaker_id"], record["utterance_id"], record["sample_rate"]) == ("p225", "p225_001", 8000)
    assert record["audio"].ndim == 1 and np.array_equal(record["audio"], raw["audio"][:, 0])
    assert np.array_equal(record["audio_voice_only"], raw["audio_voice_only"][:, 0])
    index = read_cache_index(seed_cache)
    assert len(index) == 34 and len({row["speaker_id"] for row in index.values()}) == 14
    assert read_audio_settings(seed_cache) == (SEED_AUDIO_SETTINGS, True)


def test_update_cache_on_a_2018_cache_caches_no_file_twice(seed_cache, vctk_corpus, samples_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(seed_cache, cache)
    code, out, err = call(preprocess.main, "--update_cache", "--audio_dir", vctk_corpus, "--audio_dir", samples_dir,
                          "--cache_output_dir", cache)
    assert code == 0, err
    assert "4 files cached, 34 skipped" in out  # only the extra speaker is new
    assert len(read_cache_index(cache)) == 38


def test_a_2018_cache_goes_through_inputs_training_and_comp_cos(seed_cache, tmp_path):
    code, out, err = call(preprocess.main, "--generate_training_inputs", "--cache_output_dir", seed_cache)
    assert code == 0, err
    assert "14 speakers written" in out
    recorded = read_inputs_settings(seed_cache)
    assert {k: recorded[k] for k in SEED_AUDIO_SETTINGS} == SEED_AUDIO_SETTINGS

    checkpoints = tmp_path / "checkpoints"
    code, out, err = call(train_cli.main, "--loss_on_softmax", *TINY_TRAINING, "--cache_output_dir", seed_cache,
                          "--checkpoint_dir", checkpoints)
    assert code == 0, err
    config = json.loads((checkpoints / "softmax" / "config.json").read_text())
    assert {k: config[k] for k in SEED_AUDIO_SETTINGS} == SEED_AUDIO_SETTINGS
    assert config["config_version"] == CONFIG_VERSION and config["stage"] == "softmax"

    code, out, err = call(comp_cos.main, "--unseen_speakers", "p225,p226", "--cache_output_dir", seed_cache,
                          "--checkpoint_dir", checkpoints, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["kind"] == "SAN" and result["utterances"] == [4, 4] and 0 < result["distance"] < 2


# --- an energy-trimmed cache: the model keeps the rule, scoring uses it -----------------------------

@pytest.fixture(scope="module")
def energy_run(vctk_corpus, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("energy")
    cache, checkpoints = root / "cache", root / "checkpoints"
    code, _, err = call(preprocess.main, "--regenerate_full_cache", "--generate_training_inputs", "--trim", "energy",
                        "--speed_perturb", "1.1", "--audio_dir", vctk_corpus, "--cache_output_dir", cache)
    assert code == 0, err
    for stage in (["--loss_on_softmax"], ["--loss_on_embeddings", "--normalize_embeddings"]):
        code, _, err = call(train_cli.main, *stage, *TINY_TRAINING, "--cache_output_dir", cache,
                            "--checkpoint_dir", checkpoints)
        assert code == 0, err
    return {"cache": cache, "checkpoints": checkpoints}


def test_the_model_records_the_cache_and_every_training_setting(energy_run):
    config = json.loads((energy_run["checkpoints"] / "triplet" / "config.json").read_text())
    assert (config["trim"], config["speed_perturbations"], config["augment_copies"]) == ("energy", [1.1], 0)
    assert config["config_version"] == CONFIG_VERSION and config["stage"] == "triplet"
    assert config["strategy"] == "default" and config["mixed_precision"] is False
    assert config["batch_norm_momentum"] == Config.batch_norm_momentum
    (softmax,) = config["earlier_stages"]  # how the stage it started from was trained
    assert softmax["stage"] == "softmax" and softmax["trim"] == "energy" and softmax["steps_per_epoch"] == 1
    assert Config.load(energy_run["checkpoints"] / "triplet" / "config.json").data_settings() == {
        k: config[k] for k in DATA_FIELDS}


def test_scoring_files_uses_the_model_trim(energy_run, vctk_corpus, monkeypatch):
    import deep_speaker.audio as audio

    calls = {"energy": 0, "percentile": 0}
    for rule in calls:
        original = getattr(audio, f"voice_bounds_{rule}")

        def counted(*args, _rule=rule, _original=original, **kwargs):
            calls[_rule] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(audio, f"voice_bounds_{rule}", counted)
    files = [vctk_corpus / "wav48" / "p225" / "p225_001.wav", vctk_corpus / "wav48" / "p226" / "p226_001.wav"]
    code, _, err = call(comp_cos.main, "--files", *files, "--checkpoint_dir", energy_run["checkpoints"])
    assert code == 0, err
    assert calls["energy"] >= 2 and calls["percentile"] == 0


def test_a_cache_cut_otherwise_is_refused_in_one_line(energy_run, seed_cache):
    code, _, err = call(comp_cos.main, "--unseen_speakers", "p225,p226", "--cache_output_dir", seed_cache,
                        "--checkpoint_dir", energy_run["checkpoints"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "other audio settings than the model" in err and "trim: 'percentile' vs 'energy'" in err


def test_the_cache_keeps_its_trim(energy_run, samples_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(energy_run["cache"], cache)
    code, _, err = call(preprocess.main, "--update_cache", "--trim", "percentile", "--audio_dir", samples_dir,
                        "--cache_output_dir", cache)
    assert code == 2 and len(err.splitlines()) == 1 and "other settings (trim: 'energy' vs 'percentile'" in err
    code, _, err = call(preprocess.main, "--generate_training_inputs", "--trim", "percentile",
                        "--cache_output_dir", cache)
    assert code == 2 and len(err.splitlines()) == 1 and "other settings (trim: 'energy' vs 'percentile'" in err
    assert "the training inputs take the cache's settings" in err
    # without --trim an update keeps the cache's rule
    code, _, err = call(preprocess.main, "--update_cache", "--audio_dir", samples_dir, "--cache_output_dir", cache)
    assert code == 0, err
    assert read_audio_settings(cache)[0]["trim"] == "energy"
    record = load_cached_utterance(cache / AUDIO_CACHE_DIR / "PhilippeRemy_001.pkl")
    start, end = voice_bounds_energy(record["audio"], 8000, Config.trim_top_db)
    assert np.array_equal(record["audio_voice_only"], record["audio"][start:end])


# --- pseudo-speakers are recorded, not guessed ------------------------------------------------------

def test_a_speaker_folder_named_like_a_pseudo_speaker_is_not_merged(write_wav, tmp_path):
    from deep_speaker.feature_store import FeatureStore, pack_store

    corpus, cache = tmp_path / "corpus", tmp_path / "cache"
    for number, speaker in enumerate(("Ann", "Ann-aug2", "Bo")):
        for take in range(2):
            write_wav(corpus / speaker / f"{take}.wav", "tone_in_silence", 8000, frequency=200 + 150 * number + 40 * take)
    code, out, err = call(preprocess.main, "--regenerate_full_cache", "--generate_training_inputs",
                          "--augment_copies", "1", "--audio_dir", corpus, "--cache_output_dir", cache)
    assert code == 0, err
    assert sorted(pseudo_speaker_origins(cache)) == ["Ann-aug1", "Ann-aug2-aug1", "Bo-aug1"]
    assert pseudo_speaker_origins(cache)["Ann-aug2-aug1"] == ("Ann-aug2", 1.0, 1)
    merged = merge_perturbed_speakers(merge_augmented_copies(load_inputs(cache)))
    assert sorted(merged) == ["Ann", "Ann-aug2", "Bo"]
    assert [len(merged[s]["train"]) for s in sorted(merged)] == [2, 2, 2]  # its own utterance and its copy
    pack_store(cache, Config())
    assert FeatureStore(cache).classes("augment")[0] == ["Ann", "Ann-aug2", "Bo"]

    # Two copies would give Ann's second copy the real speaker's id: refused, naming both.
    code, _, err = call(preprocess.main, "--generate_training_inputs", "--augment_copies", "2",
                        "--cache_output_dir", cache)
    assert code == 2 and err == ("error: speaker id 'Ann-aug2' would name both the real speaker 'Ann-aug2' and "
                                 "'Ann' at speed 1, augmented copy 2; rename the speaker folder, or leave it out "
                                 "with --unseen_speakers")


# --- config.json versions and _check_features ------------------------------------------------------

def test_a_version_1_config_loads_as_documented(tmp_path):
    shipped = Config.load(REPO / "deep_speaker" / "pretrained" / "config.json")
    raw = json.loads((REPO / "deep_speaker" / "pretrained" / "config.json").read_text())
    if "config_version" in raw:  # the shipped model has been retrained: test on a version-1 copy of it
        raw = {k: v for k, v in raw.items() if k not in ("config_version", "batch_norm_momentum", "earlier_stages",
                                                          "stage", "strategy")}
        raw["speed_perturbations"] = []
        (tmp_path / "v1.json").write_text(json.dumps(raw))
        shipped = Config.load(tmp_path / "v1.json")
    assert shipped.config_version == 1
    assert shipped.batch_norm_momentum == 0.99  # what that code used: Keras's default then
    speeds = sorted({float(s.rsplit("-sp", 1)[1]) for s in raw["speakers"] if "-sp" in s})
    assert shipped.speed_perturbations == speeds
    again = tmp_path / "again.json"
    shipped.save(again)
    assert Config.load(again) == shipped  # saved with version 1: still says its data settings are assumed
    current = Config(width=0.25).override(config_version=CONFIG_VERSION)
    current.save(tmp_path / "v2.json")
    assert Config.load(tmp_path / "v2.json") == current


def test_check_features_checks_every_speaker(tmp_path):
    from deep_speaker.training import TrainingError, _check_features

    config = Config()
    settings = {k: v for k, v in config.data_settings().items() if k not in ("speed_perturbations", "augment_copies")}
    inputs = {name: {"feature_settings": config.feature_settings(), "data_settings": dict(settings), "speed": 1.0,
                     "augmented_copy": 0} for name in ("a", "b", "c")}
    assert _check_features(inputs, config, tmp_path).data_settings() == config.data_settings()
    inputs["c"]["feature_settings"] = {**config.feature_settings(), "num_fbanks": 40}
    with pytest.raises(TrainingError, match=r"inputs/c\.pkl: features made with"):
        _check_features(inputs, config, tmp_path)
    inputs["c"]["feature_settings"] = config.feature_settings()
    inputs["c"]["data_settings"] = {**settings, "trim": "energy"}
    with pytest.raises(SettingsMismatchError, match="inputs of a and c were made with different settings"):
        _check_features(inputs, config, tmp_path)


def test_inputs_made_before_the_record_still_give_a_complete_config(energy_run, tmp_path):
    """Inputs from before inputs/settings.json (a streaming run reads no pickle): the
    cache's audio settings, and speed factors read from the inputs' names."""
    from deep_speaker.training import _recorded_config

    cache = tmp_path / "cache"
    shutil.copytree(energy_run["cache"], cache, ignore=shutil.ignore_patterns("store"))
    (cache / "inputs" / "settings.json").unlink()
    config = _recorded_config("softmax", Config(), "default", cache, None, None, tmp_path)  # from scratch
    assert (config.trim, config.speed_perturbations, config.augment_copies) == ("energy", [1.1], 0)
    assert config.config_version == CONFIG_VERSION and config.stage == "softmax"


# --- every data setting is a preprocess.py flag: the features follow the inputs ------------------------

TINY_40 = ["--epochs", "1", "--steps_per_epoch", "2", "--batch_size", "4", "--width", "0.0625", "--frames", "32"]


@pytest.fixture(scope="module")
def fbank40_run(vctk_corpus, tmp_path_factory) -> dict:
    """Three VCTK speakers preprocessed with --num_fbanks 40 --frame_shift_ms 20, and a
    one-epoch softmax stage trained on them with no feature flag (train_cli.py has none)."""
    root = tmp_path_factory.mktemp("fbank40")
    corpus, cache, checkpoints = root / "corpus", root / "cache", root / "checkpoints"
    for speaker in ("p225", "p226", "p227"):
        shutil.copytree(vctk_corpus / "wav48" / speaker, corpus / speaker)
    code, _, err = call(preprocess.main, "--regenerate_full_cache", "--generate_training_inputs", "--num_fbanks", "40",
                        "--frame_shift_ms", "20", "--audio_dir", corpus, "--cache_output_dir", cache)
    assert code == 0, err
    code, _, err = call(train_cli.main, "--loss_on_softmax", *TINY_40, "--cache_output_dir", cache,
                        "--checkpoint_dir", checkpoints)
    assert code == 0, err
    return {"corpus": corpus, "cache": cache, "checkpoints": checkpoints}


def test_preprocess_has_a_flag_for_every_data_setting():
    actions = {a.config_field: a for a in preprocess.build_parser()._actions if hasattr(a, "config_field")}
    assert set(actions) == set(DATA_FIELDS) == set(preprocess.CONFIG_FLAGS)
    assert actions["speed_perturbations"].option_strings[0] == "--speed_perturb"


def test_40_band_inputs_train_a_40_band_model_that_scores_with_them(fbank40_run):
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.feature_store import FeatureStore

    cache, checkpoints = fbank40_run["cache"], fbank40_run["checkpoints"]
    recorded = read_inputs_settings(cache)
    assert (recorded["num_fbanks"], recorded["frame_shift_ms"], recorded["sample_rate_hz"]) == (40, 20.0, 8000)
    inputs = load_inputs(cache)
    assert sorted(inputs) == ["p225", "p226", "p227"]
    assert {frames.shape[1] for data in inputs.values() for frames in data["train"] + data["test"]} == {40}
    store = FeatureStore(cache)
    assert store.num_fbanks == 40 and store.manifest["feature_settings"] == Config(
        num_fbanks=40, frame_shift_ms=20.0).feature_settings()

    config = json.loads((checkpoints / "softmax" / "config.json").read_text())
    assert (config["num_fbanks"], config["frame_shift_ms"], config["width"]) == (40, 20.0, 0.0625)
    assert {k: config[k] for k in DATA_FIELDS} == {k: recorded[k] for k in DATA_FIELDS}

    encoder = SpeakerEncoder(checkpoint_dir=checkpoints)
    assert (encoder.config.num_fbanks, encoder.config.frame_shift_ms) == (40, 20.0)
    embedding = encoder.embed_file(fbank40_run["corpus"] / "p225" / "p225_001.wav")
    assert embedding.shape == (encoder.embedding_dim,) and np.all(np.isfinite(embedding))
    assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-4


def test_audio_flags_that_differ_from_the_cache_are_refused_in_one_line(fbank40_run):
    cache, corpus = fbank40_run["cache"], fbank40_run["corpus"]
    settings = (cache / AUDIO_CACHE_DIR / "settings.json").read_bytes()
    code, _, err = call(preprocess.main, "--update_cache", "--sample_rate_hz", "16000", "--audio_dir", corpus,
                        "--cache_output_dir", cache)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(cache / AUDIO_CACHE_DIR) in err and "sample_rate_hz: 8000 vs 16000" in err
    assert "--regenerate_full_cache --sample_rate_hz 16000" in err
    code, _, err = call(preprocess.main, "--generate_training_inputs", "--min_voice_ms", "300",
                        "--cache_output_dir", cache)
    assert code == 2 and len(err.splitlines()) == 1 and "min_voice_ms: 100.0 vs 300.0" in err, err
    assert (cache / AUDIO_CACHE_DIR / "settings.json").read_bytes() == settings
    assert read_inputs_settings(cache)["num_fbanks"] == 40  # nothing was rebuilt


def test_stages_on_inputs_made_with_other_features_are_refused(fbank40_run, tmp_path):
    cache, checkpoints = tmp_path / "cache", tmp_path / "checkpoints"
    shutil.copytree(fbank40_run["cache"], cache, ignore=shutil.ignore_patterns("store"))
    shutil.copytree(fbank40_run["checkpoints"] / "softmax", checkpoints / "softmax",
                    ignore=shutil.ignore_patterns("tensorboard"))
    code, _, err = call(preprocess.main, "--generate_training_inputs", "--cache_output_dir", cache)  # 64 bands
    assert code == 0, err
    assert read_inputs_settings(cache)["num_fbanks"] == 64
    # The next stage starts from the 40-band softmax model: refused before anything is built.
    code, _, err = call(train_cli.main, "--loss_on_embeddings", "--normalize_embeddings", *TINY_40,
                        "--cache_output_dir", cache, "--checkpoint_dir", checkpoints)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the softmax stage was trained on inputs made with other settings" in err and "num_fbanks: 40" in err
    assert not (checkpoints / "triplet" / "state.json").exists()
    # Resuming the softmax stage on them: refused too.
    code, _, err = call(train_cli.main, "--loss_on_softmax", *TINY_40, "--epochs", "2", "--cache_output_dir", cache,
                        "--checkpoint_dir", checkpoints)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "stage was trained on inputs made with other settings" in err and "num_fbanks: 40 there vs 64 now" in err
    assert json.loads((checkpoints / "softmax" / "state.json").read_text())["epoch"] == 1


def test_inputs_refuse_an_fft_shorter_than_a_frame(tmp_path, capsys):
    """At 16 kHz a 40 ms frame is 640 samples: a 512-point FFT would cut every frame short
    (python_speech_features only logs it), so stage 2 refuses in one line and says what to set."""
    from deep_speaker.commands import preprocess

    corpus = tmp_path / "corpus" / "spk"
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        sf.write(corpus / f"u{k}.wav", 0.3 * rng.standard_normal(16000).astype(np.float32), 16000)
    cache = tmp_path / "cache"
    assert preprocess.main(["--regenerate_full_cache", "--audio_dir", str(tmp_path / "corpus"), "--cache_output_dir",
                            str(cache), "--sample_rate_hz", "16000"]) == 0
    capsys.readouterr()
    assert preprocess.main(["--generate_training_inputs", "--cache_output_dir", str(cache),
                            "--frame_length_ms", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fft_size 512 is shorter than a 40 ms frame" in err[0] and "1024" in err[0], err
    assert not (cache / "inputs").exists() or not list((cache / "inputs").glob("*.pkl"))
