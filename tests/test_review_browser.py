"""End to end in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium; nothing is downloaded): two readers rate a study made from synthetic DICOMs with two
codecs, one reloads mid-way, zoom and window/level change the displayed pixels, a corrupt
image is reported on its case and skipped, and the export holds exactly the answers given."""

from __future__ import annotations

import csv
import io
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("flask")
pytest.importorskip("scipy")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromedriver); .ci/run installs them")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from latentds.review.analyze import analyze_study  # noqa: E402
from latentds.review.app import serve_in_thread  # noqa: E402
from latentds.review.study import create_study  # noqa: E402
from latentds.testing.synthetic import make_dataset  # noqa: E402


def _browser(profile) -> webdriver.Chrome:
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--force-device-scale-factor=1", "--window-size=1300,950", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def _pixels(el) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(el.screenshot_as_png)).convert("L"), dtype=np.float64)


def _wait_ready(d, previous: str | None = None, timeout: float = 20) -> str:
    """Wait until a case (other than ``previous``) is on screen; returns its trial id."""
    def ready(drv):
        t = drv.execute_script("return document.body.dataset.ready || null")
        return t if t and t != previous else False
    return WebDriverWait(d, timeout).until(ready)


def _rate(d, trial: str, ratings: dict[str, int], comment: str = "") -> str:
    for item, v in ratings.items():
        d.find_element(By.ID, f"rate-{item}-{v}").click()
    if comment:
        d.find_element(By.ID, "comment").send_keys(comment)
    d.find_element(By.ID, "submit").click()
    return _wait_ready_or_done(d, trial)


def _wait_ready_or_done(d, previous: str) -> str:
    def moved(drv):
        if drv.find_element(By.ID, "done-view").is_displayed():
            return "done"
        t = drv.execute_script("return document.body.dataset.ready || null")
        return t if t and t != previous else False
    return WebDriverWait(d, 20).until(moved)


def _choice(reader: str, k: int) -> dict[str, int]:
    return {"fidelity": 1 + (k % 5), "diagnostic": 1 + ((k + 2) % 5), "artifacts": 5 - (k % 5 if reader == "bob" else k % 3)}


def _work(d, reader: str, n: int, given: dict, corrupt: str, problems: list) -> None:
    """Rate the next ``n`` cases as a person would (clicks); a case with a broken image shows its
    message and is skipped with the button."""
    t = _wait_ready_or_done(d, None)
    done = 0
    while done < n and t != "done":
        err = d.find_element(By.ID, "case-error")
        if err.is_displayed():
            text = d.find_element(By.ID, "case-error-text").text
            assert t == corrupt, f"unexpected image error on {t}: {text}"
            assert "cannot be shown" in text and "corrupt" in text and "skip this case" in text.lower()
            d.find_element(By.ID, "skip-case").click()
            problems.append((reader, t))
            t = _wait_ready_or_done(d, t)
            continue
        assert t != corrupt
        r = _choice(reader, len([k for k in given if k[0] == reader]))
        given[(reader, t)] = r
        t = _rate(d, t, r, comment=f"{reader} note {done}" if done == 1 else "")
        done += 1


def test_two_readers_rate_in_a_real_browser(tmp_path):
    t_start = time.perf_counter()
    make_dataset(tmp_path / "src", n_per_class=4, shape=(192, 160))
    st = create_study(tmp_path / "study", tmp_path / "src", ["bicubic-f8", "bicubic-f4"], n=6, seed=1,
                      log=lambda m: None)
    assert len(st.trials) == 12
    # corrupt one reconstruction: its case must show a clear message and the study go on
    corrupt = sorted(st.trials)[3]
    path, _ = st.image_path(corrupt, "reconstruction")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    srv, url = serve_in_thread(st)
    a = b = None
    given: dict = {}
    problems: list = []
    try:
        a = _browser(tmp_path / "chrome-a")
        b = _browser(tmp_path / "chrome-b")
        a.get(url)
        a.find_element(By.ID, "reader-name").send_keys("alice")
        a.find_element(By.ID, "signin").click()
        first = _wait_ready(a)
        if first == corrupt:  # view checks need a case with both images
            a.find_element(By.ID, "skip-case").click()
            problems.append(("alice", first))
            first = _wait_ready(a, first)

        # --- zoom and window/level change the displayed pixels (synchronised on both sides) ---
        left, right = a.find_element(By.ID, "canvas-left"), a.find_element(By.ID, "canvas-right")
        fit_l, fit_r = _pixels(left), _pixels(right)
        assert fit_l.std() > 5  # an image is on screen, not a blank canvas
        a.find_element(By.ID, "zoom-1").click()
        assert a.find_element(By.ID, "zoom-label").text == "100%"
        one_l, one_r = _pixels(left), _pixels(right)
        a.find_element(By.ID, "zoom-in").click()
        a.find_element(By.ID, "zoom-in").click()
        big_l, big_r = _pixels(left), _pixels(right)
        for before, after in ((fit_l, one_l), (one_l, big_l), (fit_r, one_r), (one_r, big_r)):
            assert np.abs(before - after).mean() > 1.0
        # at 1:1 the screen shows the image's own pixels: one screen pixel per image pixel, grey
        # level = the 16-bit value through the full-range window (found at the centre, +-2 px)
        from latentds.review.study import read_png16

        orig_side = "left" if a.find_element(By.ID, "label-left").text == "Original" else "right"
        shown = one_l if orig_side == "left" else one_r
        u16 = read_png16(*st.image_path(first, "original")).astype(np.float64)
        want = np.clip(np.rint(u16 * 255 / 65536), 0, 255)
        h, w = want.shape
        y0, x0 = (shown.shape[0] - h) // 2, (shown.shape[1] - w) // 2
        err = min(np.abs(shown[y0 + dy:y0 + dy + h, x0 + dx:x0 + dx + w] - want).max()
                  for dy in range(-2, 3) for dx in range(-2, 3))
        assert err <= 2, f"1:1 view differs from the image by up to {err} grey levels"
        # drag to pan: both panels move together
        ActionChains(a).click_and_hold(left).move_by_offset(-80, -40).release().perform()
        pan_l, pan_r = _pixels(left), _pixels(right)
        assert np.abs(pan_l - big_l).mean() > 1.0 and np.abs(pan_r - big_r).mean() > 1.0
        # window/level: shift-drag left narrows the window -> more contrast on screen
        a.find_element(By.ID, "zoom-fit").click()
        base = _pixels(left)
        ActionChains(a).key_down(Keys.SHIFT).click_and_hold(left).move_by_offset(-200, 0).release() \
            .key_up(Keys.SHIFT).perform()
        width = int(a.find_element(By.ID, "wl-width").get_attribute("value"))
        assert width < 65536 - 200 * 200
        narrow = _pixels(left)
        assert narrow.std() > base.std() * 1.2
        # the level slider (keyboard) moves the window: the picture gets darker
        lvl = a.find_element(By.ID, "wl-level")
        lvl.click()
        for _ in range(3):
            lvl.send_keys(Keys.PAGE_UP)
        assert int(lvl.get_attribute("value")) > 40000
        assert _pixels(left).mean() < narrow.mean() - 3
        a.find_element(By.ID, "wl-reset").click()
        assert int(a.find_element(By.ID, "wl-width").get_attribute("value")) == 65536

        # --- alice rates 4 cases; bob signs in and works at the same time ---
        _work(a, "alice", 4, given, corrupt, problems)
        b.get(url)
        b.find_element(By.ID, "reader-name").send_keys("bob")
        b.find_element(By.ID, "signin").click()
        _work(b, "bob", 3, given, corrupt, problems)
        # alice reloads mid-way: she continues where she left off
        done_a = len([k for k in given if k[0] == "alice"]) + len([p for p in problems if p[0] == "alice"])
        a.refresh()
        _wait_ready(a)
        assert a.find_element(By.ID, "progress-text").text.startswith(f"Case {done_a + 1} of 12")
        _work(a, "alice", 3, given, corrupt, problems)
        _work(b, "bob", 20, given, corrupt, problems)
        _work(a, "alice", 20, given, corrupt, problems)
        for d in (a, b):
            assert d.find_element(By.ID, "done-view").is_displayed()
            assert "12 of 12 done" in d.find_element(By.ID, "progress-text").text
    finally:
        for d in (a, b):
            if d is not None:
                d.quit()
        srv.shutdown()

    # --- the export holds exactly the answers given ---
    assert sorted(problems) == [("alice", corrupt), ("bob", corrupt)]
    res = analyze_study(st, tmp_path / "out", n_boot=200)
    with open(tmp_path / "out" / "answers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(given) == 22
    got = {(r["reader"], r["trial"]): {k: int(r[k]) for k in ("fidelity", "diagnostic", "artifacts")} for r in rows}
    assert got == given
    assert {r["comment"] for r in rows} == {"", "alice note 1", "bob note 1"}
    assert {(p["reader"], p["trial"]) for p in res["problems"]} == set(problems)
    assert (tmp_path / "out" / "figure2.png").exists()
    assert time.perf_counter() - t_start < 90
