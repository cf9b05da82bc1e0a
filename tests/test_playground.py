"""The playground of ``dlm serve`` (GET /) in a real headless browser: Debian's chromium driven by Selenium through
the system's chromedriver (nothing is downloaded: the driver's path is given, so Selenium Manager never runs).
One server per module (the tiny random run of tests/serving.py, fp64, with an API key typed into the page).

Skips where chromium or chromedriver is missing; ``make test`` installs them with apt-get when run as root."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver", reason="the playground test needs selenium (the dev extra)")

from serving import dlm_serve, tiny_run  # noqa: E402

KEY = "play-key"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def system_browser() -> tuple[str, str] | None:
    """(browser, chromedriver) paths of the system's Chromium, or None."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None
    )
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = system_browser()
    if found is None:
        pytest.skip("no chromium + chromedriver on PATH: apt-get install -y chromium chromium-driver (make test does)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("play") / "run")
    log = tmp_path_factory.mktemp("play-log") / "server.log"
    with dlm_serve(run, log, "--name", "tiny", "--dtype", "fp64", "--api-key", KEY) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser, server):
    """The playground, connected: the API key typed in, the model's samplers listed."""
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    key = browser.find_element("id", "api-key")
    key.clear()
    key.send_keys(KEY + Keys.TAB)  # change -> GET /v1/models with the key
    wait(browser, "return document.getElementById('sampler').options.length > 0")
    return browser


def wait(browser, script: str, seconds: float = 20.0):
    """Poll a JavaScript expression until it is truthy; its value."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}\npage error: {browser.find_element('id', 'error').text}")


def fill(browser, **fields):
    for name, value in fields.items():
        box = browser.find_element("id", name)
        box.clear()
        box.send_keys(str(value))


def generate(browser) -> dict:
    """Press Generate and wait for the run to end; the page's record of it."""
    runs = browser.execute_script("return window.dlmPlayground.runs")
    browser.find_element("id", "generate").click()
    wait(browser, f"return window.dlmPlayground.runs > {runs}")
    return browser.execute_script("const s = window.dlmPlayground; return {frames: s.frames, history: s.history}")


def test_the_page_is_static_and_local(server):
    html = httpx.get(server + "/").text  # no key needed for the page itself
    assert "<title>dlm playground</title>" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere


def test_generate_unmasks_the_canvas_then_shows_the_text(page, server):
    settings = dict(max_tokens=16, steps=8, block_length=4, seed=1)
    fill(page, prompt="Emma was", **settings)
    run = generate(page)
    frames, history = run["frames"], run["history"]
    assert page.find_element("id", "error").text == ""
    assert len(frames) >= 4  # one frame per denoising step, as drawn
    assert any(f["masked"] > 0 for f in frames[:-1])  # intermediate canvases had masked positions on screen
    assert frames[-1]["final"] and frames[-1]["masked"] == 0  # and the last had none
    masked = [h["masked"] for h in history]
    assert masked == sorted(masked, reverse=True) and masked[0] > 0

    # the text shown is the server's answer for the same request
    body = {"model": "tiny", "prompt": "Emma was", "max_tokens": 16, "seed": 1, "dlm": {"steps": 8, "block_length": 4}}
    reply = httpx.post(server + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    text = reply.json()["choices"][0]["text"]
    assert text.strip() and page.find_element("id", "final").text == text.strip()  # innerText drops edge spaces
    assert page.find_element("id", "nfe").text == str(reply.json()["dlm"]["nfe"])
    assert page.find_element("id", "latency").text.endswith("ms") and float(page.find_element("id", "tps").text) > 0

    # the step slider replays the history: the first step has masks, steps commit highlighted tokens
    slider = page.find_element("id", "step-slider")
    assert slider.is_enabled() and int(slider.get_attribute("max")) == len(history) - 1
    replay = "const s = document.getElementById('step-slider'); s.value = arguments[0];"
    replay += "s.dispatchEvent(new Event('input')); return [document.querySelectorAll('#canvas .masked').length,"
    replay += "document.querySelectorAll('#canvas .new').length, document.getElementById('step-label').textContent]"
    first_masked, _, label = page.execute_script(replay, 0)
    placeholders = sum(cell["state"] == "masked" for cell in history[0]["canvas"])  # masked, no candidate shown
    assert first_masked == placeholders > 0 and label.startswith(f"step {history[0]['step']}")
    new = [page.execute_script(replay, i)[1] for i in range(len(history) - 1)]
    assert sum(new) > 0  # tokens committed at a step are highlighted at that step
    assert page.execute_script(replay, len(history) - 1)[0] == 0


def test_chat_keeps_the_conversation(page):
    page.find_element("css selector", "#modes button[data-mode=chat]").click()
    fill(page, prompt="Who is Emma?", max_tokens=8, steps=4, block_length=4, seed=2)
    generate(page)
    assert page.find_element("id", "error").text == ""
    assert len(page.find_elements("css selector", "#conversation .turn")) == 2
    assert page.find_element("id", "prompt").get_attribute("value") == ""  # ready for the next message
    fill(page, prompt="And then?")
    run = generate(page)
    turns = page.find_elements("css selector", "#conversation .turn")
    assert [t.get_attribute("class") for t in turns] == ["turn user", "turn assistant"] * 2
    assert turns[2].text == "User: And then?" and run["frames"][-1]["final"]
    sent = page.execute_script("return window.dlmPlayground.request.messages")
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # the conversation went with the question


def test_infill_and_edit_modes(page):
    page.find_element("css selector", "#modes button[data-mode=infill]").click()
    fill(page, prompt="It is a truth [MASK*4] acknowledged", steps=4, block_length="", seed=1)
    generate(page)
    assert page.find_element("id", "error").text == ""
    fills = page.find_elements("css selector", "#canvas .fill")
    result = page.execute_script("return window.dlmPlayground.result")
    assert [f.text for f in fills] == [f.strip() for f in result["fills"]] and len(fills) == 1
    assert page.find_element("id", "final").text == result["text"].strip()

    page.find_element("css selector", "#modes button[data-mode=edit]").click()
    fill(page, prompt="It is a truth universally acknowledged")
    page.execute_script("document.getElementById('prompt').setSelectionRange(8, 13)")  # select "truth"
    generate(page)
    assert page.find_element("id", "error").text == ""
    assert page.execute_script("return window.dlmPlayground.request.spans") == [[8, 13]]
    result = page.execute_script("return window.dlmPlayground.result")
    assert result["positions"] and page.find_element("id", "final").text == result["text"].strip()
