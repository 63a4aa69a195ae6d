"""The app in a real headless Chromium: type a prompt, press Generate, watch the video grow and play.

Uses Debian's /usr/bin/chromium (Playwright's own browser download is not needed). Set
FIFO_UPDATE_SCREENSHOT=1 to refresh docs/screenshot.png for the README.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests"
    ),
]

VIDEO_STATE = """() => {
    const v = document.querySelector('#live video');
    return v ? {duration: v.duration, time: v.currentTime, paused: v.paused, ready: v.readyState} : null;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="module")
def page(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


def test_generate_streams_a_growing_video_that_plays(url, page, tmp_path):
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    page.locator("#prompt textarea").fill("0: a yellow square moving down-left fast\n60: a yellow square moving right slowly")
    page.locator("#generate").click()

    durations: list[float] = []
    played = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        v = page.evaluate(VIDEO_STATE)
        if v and v["duration"] and v["duration"] == v["duration"] and v["duration"] != float("inf"):  # finite, not NaN
            if not durations or v["duration"] > durations[-1]:
                durations.append(v["duration"])
            played = played or v["time"] > 0
        if len(durations) >= 3 and played:
            break
        time.sleep(0.25)
    assert len(durations) >= 3, f"the video did not grow: durations seen {durations}"
    assert played, "the video never played"

    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
    assert "frame 72 of 72" in page.locator("#status").inner_text()  # the default 6 s at 12 fps
    assert page.locator("#share textarea").input_value().startswith(url)
    page.wait_for_timeout(1500)  # let the last queue picture land
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("FIFO_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "screenshot.png")


def test_a_share_link_fills_in_the_settings(url, page):
    page.goto(
        url + "?prompt=0%3A+a+red+ball+moving+right%0A24%3A+a+red+ball+moving+up&frames=36&seed=5&partitions=2&lookahead=off"
    )
    page.wait_for_function("document.querySelector('#prompt textarea')?.value === 'a red ball moving right'", timeout=60_000)
    assert page.get_by_text("Settings loaded from the link").is_visible()
    assert page.get_by_label("Seed", exact=True).input_value() == "5"
