"""The page at "/" of the speaker service (deep_speaker/service/static/), in a real headless
Chromium (Debian's chromium and chromium-driver, driven by Selenium) against a real server
process: real recordings are uploaded from the page and enrolled, a second recording of a
speaker is identified, a microphone recording (Chromium's fake capture device playing a
real recording) is identified too, and a conversation of two real speakers is diarized (its
timeline drawn with a lane per speaker); the answers are read from the page.

DEEP_SPEAKER_PAGE_SCREENSHOT=docs/service-page.png writes the screenshot the docs show."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import need_real_speech, running_in_ci
from deep_speaker.service.app import PAGE_FILES, create_app
from deep_speaker.service.keys import create_key
from deep_speaker.service.store import Store
from serving import Server, talk

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_ENV = "DEEP_SPEAKER_PAGE_SCREENSHOT"


def test_the_page_and_its_files_need_no_key_and_load_nothing_from_elsewhere():
    client = TestClient(create_app(None))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything from this server
    for path in PAGE_FILES:
        assert client.get(path).status_code == 200
    assert client.get("/page.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/readyz").status_code == 503  # the API still needs a service and a key: only the page is public
    assert "/" not in create_app(None).openapi()["paths"]


def need_chromium() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        reason = f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver)"
        if running_in_ci():
            pytest.fail(f"{reason}; CI=true needs the browser test (.ci/run installs them)", pytrace=False)
        pytest.skip(reason)


def browser(fake_microphone: Path):
    """Headless Chromium through Selenium, at Debian's binaries (no Selenium Manager, no download).
    The microphone is Chromium's fake capture device playing `fake_microphone`, allowed without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--window-size=880,1260", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_microphone}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=DriverService(executable_path=str(CHROMEDRIVER)))


def test_the_page_enrols_and_identifies_in_headless_chromium(tmp_path, vctk_corpus):
    need_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wav48 = vctk_corpus / "wav48"
    recordings = {name: sorted((wav48 / name).glob("*.wav")) for name in ("p225", "p226", "p227")}
    if any(len(files) < 4 for files in recordings.values()):
        need_real_speech(f"{wav48}: p225, p226 and p227 need 4 recordings each")
    database = f"sqlite:///{tmp_path / 'speakers.db'}"
    store = Store(database)
    key = create_key(store, ["admin"], name="page test").key
    store.close()
    microphone = tmp_path / "microphone.wav"  # Chromium's fake capture device reads a WAV file
    shutil.copyfile(recordings["p227"][3], microphone)

    with Server(database, tmp_path).wait_ready() as server:
        driver = browser(microphone)
        try:
            wait = WebDriverWait(driver, 60, poll_frequency=0.05)
            find = lambda id_: driver.find_element(By.ID, id_)  # noqa: E731

            def answer_of(button: str, state: str = "done") -> str:
                result = find("result")
                driver.execute_script("arguments[0].dataset.state = 'idle'", result)
                find(button).click()
                wait.until(lambda _: result.get_attribute("data-state") in ("done", "error"))
                assert result.get_attribute("data-state") == state, result.text
                return result.text

            def listed() -> list[str]:  # the enrolled speakers the page lists, read at once (the list is redrawn)
                return driver.execute_script("return Array.from(document.querySelectorAll('#speakers li'), "
                                             "item => item.textContent.split(':')[0])")

            def choose(*paths: Path) -> None:  # as a person choosing files does: they replace the previous choice
                driver.execute_script("arguments[0].value = ''", find("file"))  # (send_keys would add to it)
                find("file").send_keys("\n".join(str(path) for path in paths))

            driver.get(f"{server.base}/")
            assert driver.title.startswith("deep-speaker")
            assert answer_of("identify", "error").startswith("Record something or choose a file first")
            find("key").send_keys(key)
            find("check").click()
            wait.until(lambda _: "key accepted" in find("key-state").text)
            assert "runtime onnx" in find("key-state").text

            for name, files in recordings.items():  # three recordings each, chosen together
                choose(*files[:3])
                speaker = find("speaker")
                speaker.clear()
                speaker.send_keys(name)
                assert f"enrolled {name}" in answer_of("enrol") and "3 in all" in find("result").text
            wait.until(lambda _: listed() == list(recordings))

            choose(recordings["p225"][3])  # a fourth recording, not enrolled
            answer_of("identify")
            assert find("answer").text == "p225"
            assert "p226" in find("result").text and "p227" in find("result").text  # the top 3 with scores

            speaker = find("speaker")
            speaker.clear()
            speaker.send_keys("p225")
            answer_of("verify")
            assert find("answer").text == "same speaker: p225"
            speaker.clear()
            speaker.send_keys("nobody")  # the API's error, as the page shows it
            assert answer_of("verify", "error").startswith("404 speaker_not_found: speaker 'nobody' is not enrolled")

            # The microphone: record, stop; the page decodes what MediaRecorder made and sends WAV.
            find("record").click()
            wait.until(lambda _: "recording:" in find("record-state").text)
            driver.execute_script("return new Promise(done => setTimeout(done, 3500))")
            find("record").click()
            wait.until(lambda _: "from the microphone" in find("chosen").text)
            seconds = float(find("chosen").text.split("recording: ")[1].split(" s")[0])
            assert 3.0 <= seconds <= 10.0  # about the 3.5 s between the clicks (more on a busy machine)
            answer_of("identify")
            assert find("answer").text == "p227"

            # Erasing a speaker, after the page's confirmation.
            find("speakers").find_elements(By.TAG_NAME, "button")[1].click()
            confirmation = wait.until(expected_conditions.alert_is_present())
            assert confirmation.text == "Erase p226 and all its embeddings?"
            confirmation.accept()
            wait.until(lambda _: listed() == ["p225", "p227"])
            assert find("result").text == "deleted p226 (3 embedding(s) erased)"

            # Who spoke when: a talk of p225 (enrolled) and p239 (not), its timeline one lane per speaker.
            choose(talk(vctk_corpus, ["p225_004", "p239_004", "p225_002", "p239_005"], tmp_path / "talk.wav")[0])
            find("speaker").clear()  # diarize needs no name
            answer_of("diarize")
            assert find("answer").text == "2 speaker(s)"
            lanes = driver.execute_script("return Array.from(document.querySelectorAll('#timeline .lane'), "
                                          "lane => [lane.dataset.speaker, lane.querySelectorAll('rect').length])")
            assert len(lanes) == 2 and "p225" in dict(lanes) and all(bars >= 1 for _, bars in lanes), lanes
            screenshot = driver.get_screenshot_as_png()

            expected = "/v1/verify - Failed to load resource: the server responded with a status of 404"  # "nobody"
            problems = [entry for entry in driver.get_log("browser")
                        if entry["level"] == "SEVERE" and expected not in entry["message"]]
            assert problems == []
            assert list(server.tmp.glob("deep-speaker-upload-*")) == []  # each removed after its request
        finally:
            driver.quit()
        assert "Traceback" not in server.log() and key not in server.log()
    (tmp_path / "page.png").write_bytes(screenshot)
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).write_bytes(screenshot)


def test_the_page_diarizes_the_microphone_live_in_headless_chromium(tmp_path, vctk_corpus):
    """Live: Chromium's fake microphone plays a real conversation (p239, enrolled, and p225, not) in real time;
    the page streams it over the WebSocket and draws the turns as they come; Stop ends the stream."""
    need_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wav48 = vctk_corpus / "wav48"
    if len(sorted((wav48 / "p239").glob("*.wav"))) < 12:
        need_real_speech(f"{wav48}: p239 needs 12 recordings")
    conversation, turns = talk(vctk_corpus, ["p225_004", "p239_004", "p225_002", "p239_005"], tmp_path / "talk.wav")
    database = f"sqlite:///{tmp_path / 'speakers.db'}"
    store = Store(database)
    key = create_key(store, ["admin"], name="live page test").key
    store.close()
    with Server(database, tmp_path).wait_ready() as server:
        import httpx

        enrol = [wav48 / "p239" / f"p239_{i:03d}.wav" for i in (1, 2, 3, 6, 7, 8, 9, 10, 11, 12)]  # not the talk's
        answer = httpx.post(f"{server.base}/v1/speakers/p239/enrol", headers={"Authorization": f"Bearer {key}"},
                            files=[("files", (f.name, f.read_bytes(), "audio/wav")) for f in enrol], timeout=60)
        assert answer.status_code == 201, answer.text
        driver = browser(conversation)
        try:
            wait = WebDriverWait(driver, 60, poll_frequency=0.1)
            find = lambda id_: driver.find_element(By.ID, id_)  # noqa: E731
            driver.get(f"{server.base}/")
            find("key").send_keys(key)
            find("live").click()
            wait.until(lambda _: "listening" in find("live-state").text)
            # The fake microphone plays the conversation in real time (and then loops): let it play once.
            driver.execute_script(f"return new Promise(done => setTimeout(done, {int(1000 * turns[-1][1]) + 1500}))")
            assert find("result").get_attribute("data-state") == "live", find("result").text
            assert find("answer").text.startswith(("now: ", "last: ", "listening"))  # in a pause: listening
            assert int(find("result").text.split(" turn(s) final")[0].split()[-1]) >= 2, find("result").text
            find("live").click()  # Stop
            wait.until(lambda _: find("result").get_attribute("data-state") in ("done", "error"))
            assert find("result").get_attribute("data-state") == "done", find("result").text
            lanes = driver.execute_script("return Array.from(document.querySelectorAll('#timeline .lane'), "
                                          "lane => lane.dataset.speaker)")
            assert "p239" in lanes and len(lanes) >= 2, lanes  # the enrolled voice by name, the other numbered
            assert find("live").text.endswith("Live: who is speaking?")
            problems = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
            assert problems == []
        finally:
            driver.quit()
    assert "live stream" not in server.log()  # no error or refusal logged
