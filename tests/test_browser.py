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
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield pg
    pg.close()


def box(page, selector: str) -> dict:
    """The element's box in the viewport (x, y, width, height), scrolled to the top of the page."""
    b = page.locator(selector).first.bounding_box()
    assert b is not None, f"{selector} is not on the page"
    return b


def shoot(page, name: str, tmp_path) -> None:
    """A screenshot of the viewport; with FIFO_UPDATE_SCREENSHOT=1 it also goes to docs/."""
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("FIFO_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / name)


def wait_idle(page) -> None:
    page.wait_for_function("!document.querySelector('#generate').disabled", timeout=120_000)


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


def test_desktop_layout_buttons_and_seed_while_running(url, browser, tmp_path):
    """1280x900: video, progress and queue picture visible together; Generate off and Stop on only while running."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        assert page.locator("#stop").is_disabled() and page.locator("#generate").is_enabled()
        prompt, ex, estimate = box(page, "#prompt"), box(page, "#examples"), box(page, "#estimate")
        assert prompt["y"] < ex["y"] < estimate["y"], "the examples sit next to the prompt, above the settings"
        shoot(page, "app-1280x900-idle.png", tmp_path)
        page.locator("#prompt textarea").fill("a red ball moving right")
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('frame ')", timeout=60_000)
        assert page.locator("#generate").is_disabled() and page.locator("#stop").is_enabled()
        assert page.locator("#extend").is_disabled()
        for sel in ("#live", "#status", "#queue"):
            b = box(page, sel)
            assert b["y"] >= 0 and b["y"] + min(b["height"], 120) <= 900, f"{sel} is out of view: {b}"
        page.wait_for_timeout(1500)  # a queue picture or two
        shoot(page, "app-1280x900-running.png", tmp_path)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
        wait_idle(page)
        assert page.locator("#stop").is_disabled()
        link = page.locator("#share textarea").input_value()
        seed = link.split("seed=")[1].split("&")[0]
        page.wait_for_function(f"document.querySelector('#seed input')?.value === '{seed}'", timeout=10_000)
        assert page.locator("video#live, #live video").first.get_attribute("loop") is not None
    finally:
        page.close()


def test_phone_layout(url, browser, tmp_path):
    """390x844: Generate on the first screen, labels readable, then a run's video in view once scrolled to it."""
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        gen = box(page, "#generate")
        assert gen["y"] + gen["height"] <= 844, f"Generate is {gen['y']:.0f} px down"
        shoot(page, "app-390x844-idle.png", tmp_path)
        page.locator("#prompt textarea").fill("a yellow square moving down-left fast")
        page.locator("#length input").fill("60")  # long enough that Stop lands mid-run on a fast machine
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('frame ')", timeout=60_000)
        page.locator("#live").scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        shoot(page, "app-390x844-running.png", tmp_path)
        q = box(page, "#queue")
        assert q["width"] >= 300 and q["height"] >= 80, f"the queue picture is too small to read: {q}"
        page.locator("#stop").click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Stopped')", timeout=60_000)
    finally:
        page.close()


def test_a_crafted_link_renders_no_link_or_image(url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        bad = "%5Bclick+here%5D(https%3A%2F%2Fevil.example%2Fphish)"
        img = "%3Cimg+src%3Dhttps%3A%2F%2Fevil.example%2Fx.png%3E"
        page.goto(url + f"?prompt=a+red+ball+moving+right&seed={bad}&eta={img}&{img}=1")
        page.wait_for_function("document.querySelector('#link-note')?.innerText.includes('except')", timeout=60_000)
        assert "evil.example" in page.locator("#link-note").inner_text()  # shown as text
        assert page.locator("a[href*='evil.example']").count() == 0
        assert page.locator("img[src*='evil.example']").count() == 0
    finally:
        page.close()


def test_gradio_page_parameters_are_not_reported_and_a_schedule_shows_whole(url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url + "?__theme=dark")
        page.wait_for_selector("#generate", timeout=60_000)
        page.wait_for_timeout(1500)
        assert not page.locator("#link-note").is_visible()
        page.goto(url + "?prompt=0%3A+a+red+ball+moving+right%0A24%3A+a+red+ball+moving+up&frames=36")
        page.wait_for_function("document.querySelector('#prompt textarea')?.value === 'a red ball moving right'", timeout=60_000)
        page.wait_for_timeout(500)
        page.wait_for_function("document.querySelector('#schedule')?.innerText.includes('a red ball moving up')", timeout=10_000)
        assert page.locator("#schedule").is_visible()  # the table is open: the whole schedule shows
    finally:
        page.close()


def test_an_example_streams_on_first_click_and_can_be_extended(url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        page.get_by_text("red ball, right", exact=True).first.click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('frame ')", timeout=60_000)
        assert page.locator("#generate").is_disabled()  # a real run, streaming, not a cached file
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
        wait_idle(page)
        page.locator("#extend").click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes(' new)')", timeout=60_000)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
    finally:
        page.close()


def test_a_queued_visitor_sees_the_queue_position(url, browser):
    first, second = (browser.new_page(viewport={"width": 1280, "height": 900}) for _ in range(2))
    try:
        for pg in (first, second):
            pg.goto(url)
            pg.wait_for_selector("#generate", timeout=60_000)
            pg.locator("#prompt textarea").fill("a red ball moving right")
        first.locator("#generate").click()
        first.wait_for_function("document.querySelector('#status')?.innerText.includes('frame ')", timeout=60_000)
        second.locator("#generate").click()
        # Gradio's own progress line on the status panel: "queue: 1/1 | 0.3s"
        second.wait_for_function(
            "/queue: \\d+\\/\\d+/.test(document.querySelector('#status')?.parentElement?.innerText || '')", timeout=30_000
        )
        first.locator("#stop").click()
        second.wait_for_function("document.querySelector('#status')?.innerText.includes('frame ')", timeout=120_000)
        second.locator("#stop").click()
        second.wait_for_function("document.querySelector('#status')?.innerText.match(/Stopped|Done/)", timeout=120_000)
    finally:
        first.close()
        second.close()


DRIFT_POINTS = """() => [...document.querySelectorAll('#drift svg .mark-line path')]
    .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length)"""


def test_the_drift_plot_grows_while_the_video_streams(url, browser, tmp_path):
    """The drift plot gains a point per series as each second completes; it fits a phone without sideways scrolling."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        page.locator("#prompt textarea").fill("0: a red ball moving right\n30: a blue square moving down fast")
        page.locator("#length input").fill("5")
        page.locator("#generate").click()
        seen: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            points = page.evaluate(DRIFT_POINTS)
            if len(points) == 5 and (not seen or max(points) > seen[-1]):
                seen.append(max(points))
            if "Done" in page.locator("#status").inner_text() and seen and seen[-1] == 5:
                break
            time.sleep(0.2)
        assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] == 5, f"points per series seen: {seen}"
        assert "pixel statistics, first vs last of 5 seconds" in page.locator("#drift-summary").inner_text()
        page.evaluate("document.querySelector('#drift').scrollIntoView({block: 'center'})")
        page.wait_for_timeout(500)
        shoot(page, "app-drift.png", tmp_path)
    finally:
        page.close()
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        phone.goto(url)
        phone.wait_for_selector("#generate", timeout=60_000)
        phone.locator("#prompt textarea").fill("a yellow square moving down-left fast")
        phone.locator("#length input").fill("2")
        phone.locator("#generate").click()
        phone.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
        phone.wait_for_function(f"({DRIFT_POINTS})().length === 5", timeout=10_000)
        phone.locator("#drift").scroll_into_view_if_needed()
        b = box(phone, "#drift")
        assert b["x"] >= 0 and b["x"] + b["width"] <= 390 and b["height"] >= 150, f"the drift plot does not fit: {b}"
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    finally:
        phone.close()


def test_the_prompt_changes_while_the_video_streams(url, browser, tmp_path):
    """Generate, type a new prompt, press 'Change prompt': the status says when it takes over; the link records it."""
    import re

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        assert page.locator("#change-prompt").is_disabled()  # nothing to steer yet
        page.locator("#prompt textarea").fill("a red ball moving right")
        page.locator("#length input").fill("24")  # long enough that the change lands well before the end
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('frame ')", timeout=60_000)
        assert page.locator("#change-prompt").is_enabled()
        page.locator("#prompt textarea").fill("a red ball moving up")
        page.locator("#change-prompt").click()
        page.wait_for_function(
            "document.querySelector('#status')?.innerText.includes(\"'a red ball moving up' takes over at frame\")",
            timeout=30_000,
        )
        status = page.locator("#status").inner_text()
        assert re.search(r"takes over at frame \d+ \(in about .* (at the current speed|by the estimate)\)", status), status
        frame = int(status.split("takes over at frame ")[1].split()[0])
        page.get_by_text(f"takes over at frame {frame}").first.wait_for(timeout=10_000)  # the toast too
        page.wait_for_timeout(1000)  # a queue picture or two
        shoot(page, "app-steer.png", tmp_path)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
        wait_idle(page)
        assert page.locator("#change-prompt").is_disabled()
        assert f"took over at frame {frame}" in page.locator("#status").inner_text()
        link = page.locator("#share textarea").input_value()
        assert f"{frame}%3A+a+red+ball+moving+up" in link, link
    finally:
        page.close()


def test_a_video_continues_an_uploaded_clip(url, browser, tmp_path):
    """Upload a toy clip, Generate: the player starts with the clip and grows; the share box says what its link cannot carry."""
    import numpy as np

    import fifo
    from fifo.backbones.toy import ToyBackbone
    from fifo.video import write_video

    prompt = "a red ball moving right"
    clip = np.stack(list(fifo.generate(ToyBackbone(height=128, width=128), prompt, 24, fifo.FIFOConfig(partitions=1), seed=3)))
    write_video(tmp_path / "my-clip.mp4", clip, 12)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        page.locator("#prompt textarea").fill(prompt)
        page.locator("#length input").fill("4")
        page.locator("#upload-box").get_by_text("Start from your own picture or clip").click()
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "my-clip.mp4"))
        page.wait_for_function("document.querySelector('#upload')?.innerText.includes('my-clip.mp4')", timeout=30_000)
        assert "cannot carry your upload" in page.locator("#upload-box").inner_text()
        note = "document.querySelector('#upload-note')?.innerText.includes('A 128x128 clip of 2.0 s')"
        page.wait_for_function(note, timeout=30_000)
        page.locator("#generate").click()
        durations: list[float] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(durations) < 3:
            v = page.evaluate(VIDEO_STATE)
            if v and v["duration"] and v["duration"] == v["duration"] and v["duration"] != float("inf"):
                if not durations or v["duration"] > durations[-1]:
                    durations.append(v["duration"])
            time.sleep(0.25)
        assert len(durations) >= 3, f"the video did not grow: durations seen {durations}"
        assert durations[0] >= 1.9, f"the player did not start with the 2 s clip: {durations}"
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')", timeout=120_000)
        assert "frame 72 of 72 (48 of 48 new)" in page.locator("#status").inner_text()  # 24 uploaded + 4 s at 12 fps
        wait_idle(page)
        page.wait_for_function("document.querySelector('#share')?.innerText.includes('prompt alone')", timeout=10_000)
        page.wait_for_timeout(1500)  # the player loops the whole video
        bottom = "document.querySelector('#upload-note').getBoundingClientRect().bottom + window.scrollY"
        page.evaluate(f"window.scrollTo(0, Math.max(0, {bottom} - 890))")  # the upload and its note, the player above
        page.wait_for_timeout(1000)
        for sel in ("#upload", "#upload-note", "#live", "#status"):  # the upload next to the player and its progress
            b = box(page, sel)
            assert 0 <= b["y"] and b["y"] + b["height"] <= 900, f"{sel} is out of view: {b}"
        shoot(page, "app-upload.png", tmp_path)
    finally:
        page.close()
