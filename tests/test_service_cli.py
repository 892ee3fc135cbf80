"""deep-speaker-serve (deep_speaker/commands/serve.py, scripts/serve.py): the service
starts with one command, answers over HTTP, finishes the requests in flight on
SIGTERM and leaves no process behind, all on a plain install plus [serve]; keys, import/export and the OpenAPI document
from the command line; one line for what is missing or wrong."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO_ROOT, free_ports, need_real_speech
from deep_speaker.commands.serve import main
from deep_speaker.service.keys import parse_key
from deep_speaker.service.store import Store
from test_plain_install import SITECUSTOMIZE

SERVE = REPO_ROOT / "scripts" / "serve.py"


def long_recordings(shared_data: Path, count: int) -> list[Path]:
    """`count` LibriSpeech recordings of about 14 s (the single-utterance speakers)."""
    root = shared_data / "librispeech" / "train-clean-100"
    found = [path for path in sorted(root.glob("*/*/*.flac")) if path.parts[-3] not in ("19", "26", "27")][:count]
    if len(found) < count:
        need_real_speech(f"{root}: fewer than {count} single-utterance speakers")
    return found


def live_processes_of_group(group: int) -> list[str]:
    """The processes of a process group that still run (not zombies, which only wait for
    a parent to reap them), as "pid command"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(f"{stat.parent.name} {text[text.index('(') + 1:text.rindex(')')]}")
    return found


def run_cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SERVE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_service_starts_with_one_command_and_stops_cleanly_on_sigterm(tmp_path, shared_data):
    """On a plain install plus [serve]: TensorFlow, Keras and the other extras' packages are
    hidden from the server and its workers (tests/test_plain_install.py's sitecustomize)."""
    database = f"sqlite:///{tmp_path / 'speakers.db'}"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    plain = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    created = run_cli("keys", "create", "--database", database, "--scope", "enrol", "--name", "test", cwd=tmp_path,
                      env=plain)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert parse_key(key) is not None  # the key alone on the last line
    headers = {"Authorization": f"Bearer {key}"}
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    # cwd: a folder without deep-speaker-data/checkpoints, so the shipped model serves
    server = subprocess.Popen([sys.executable, str(SERVE), "--database", database, "--port", str(port), "--workers", "1",
                               "--requests_per_minute", "100000"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True, env=plain)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() else ""
            time.sleep(0.2)
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 401
        assert httpx.get(f"{base}/readyz", headers=headers, timeout=5).json()["runtime"] == "onnx"

        # Two enrolments in flight (one running, one queued on the single worker), then SIGTERM.
        files = long_recordings(shared_data, 10)
        answers = {}

        def enrol(name):
            with httpx.Client(timeout=60) as client:
                answers[name] = client.post(f"{base}/v1/speakers/{name}/enrol", headers=headers,
                                            files=[("files", (f.name, f.read_bytes())) for f in files])

        threads = [threading.Thread(target=enrol, args=(name,)) for name in ("first", "second")]
        for thread in threads:
            thread.start()
        while httpx.get(f"{base}/readyz", headers=headers, timeout=5).json()["in_flight"] < 2:
            assert all(thread.is_alive() for thread in threads), answers
            time.sleep(0.02)
        started = time.monotonic()
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # the event loop is free meanwhile
        assert time.monotonic() - started < 1.0
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        # uvicorn re-raises SIGTERM once it has shut down gracefully: the exit a service manager expects
        assert server.wait(60) in (0, -signal.SIGTERM)
        log = server.stdout.read()
        assert "Shutting down" in log and "Traceback" not in log and key not in log
        assert [answers[name].status_code for name in ("first", "second")] == [201, 201], answers
        deadline = time.monotonic() + 10
        while live_processes_of_group(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_processes_of_group(server.pid) == []  # no worker process outlived the server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    store = Store(database)
    assert [(r.id, r.utterances) for r in store.speakers()] == [("first", 10), ("second", 10)]
    assert store.integrity_check() == "ok"
    store.close()


def test_keys_from_the_command_line(tmp_path, capsys):
    database = str(tmp_path / "keys.db")
    assert main(["keys", "create", "--database", database, "--scope", "verify", "--scope", "identify"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    key_id = parse_key(key)[0]
    assert main(["keys", "list", "--database", database, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["id"], k["scopes"], k["revoked"]) for k in listed] == [(key_id, ["verify", "identify"], None)]
    assert key not in json.dumps(listed)
    assert main(["keys", "revoke", "--database", database, key_id]) == 0
    assert main(["keys", "list", "--database", database]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "--database", database, "000000000000"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    with pytest.raises(SystemExit):
        main(["keys", "create", "--database", database, "--scope", "everything"])


def test_enrolments_import_and_export_as_identify_py_reads_them(tmp_path, capsys, vctk_corpus):
    from deep_speaker.commands.identify import main as identify_main
    from deep_speaker.encoder import SpeakerEncoder
    from deep_speaker.identification import Enrolment

    wav48 = vctk_corpus / "wav48"
    voices = {name: sorted((wav48 / name).glob("*.wav"))[:3] for name in ("p225", "p226")}
    made = SpeakerEncoder(workers=1).enroll(voices)  # what identify.py --enroll writes
    made.save(tmp_path / "made.npz")
    database = str(tmp_path / "speakers.db")
    assert main(["import", "--database", database, str(tmp_path / "made.npz"), "--checkpoint_dir",
                 str(tmp_path / "none")]) == 0
    assert "2 speakers imported" in capsys.readouterr().out
    assert main(["import", "--database", database, str(tmp_path / "made.npz")]) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(["export", "--database", database, "--output", str(tmp_path / "out.npz")]) == 0
    assert "2 speakers exported" in capsys.readouterr().out
    back = Enrolment.load(tmp_path / "out.npz")
    assert back.speakers == made.speakers and back.utterances == made.utterances
    np.testing.assert_allclose(back.embeddings, made.embeddings, atol=1e-6)
    query = sorted((wav48 / "p226").glob("*.wav"))[3]
    assert identify_main(["--enrolment", str(tmp_path / "out.npz"), "--files", str(query), "--json",
                          "--checkpoint_dir", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["matches"][0]["speaker"] == "p226"

    other = Enrolment(["x"], made.embeddings[:1], [1], {"sha256": "0" * 64, "path": "/other.keras"}, made.settings)
    other.save(tmp_path / "other.npz")
    assert main(["import", "--database", database, str(tmp_path / "other.npz")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "another model" in error and "\n" not in error


def test_the_openapi_document_from_the_command_line(tmp_path, capsys):
    assert main(["openapi", "--output", str(tmp_path / "openapi.json")]) == 0
    document = json.loads((tmp_path / "openapi.json").read_text())
    assert "/v1/identify" in document["paths"] and document["paths"]["/v1/verify"]["post"]["x-scope"] == "verify"


def test_what_is_missing_or_wrong_is_one_line(tmp_path, capsys, monkeypatch):
    assert main(["keys", "list", "--database", "mysql://host/db"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as on a plain install without [serve]
    assert main(["--database", str(tmp_path / "s.db")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and 'pip install "deep-speaker[serve]"' in error and "fastapi" in error
