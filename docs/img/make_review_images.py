"""Regenerate docs/img/review_rating.png and docs/img/review_figure2.png (README, docs/review.md).

    python docs/img/make_review_images.py

ILLUSTRATION ONLY: the study is built from SYNTHETIC phantoms, and its answers come from two
*scripted* readers whose ratings follow each reconstruction's PSNR against the original (plus
reader-specific noise); no person rated anything. It shows what the page and the plot look
like, not how any codec performs for radiologists. Needs Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from latentds.review.analyze import analyze_study
    from latentds.review.app import serve_in_thread
    from latentds.review.db import AnswerDB
    from latentds.review.study import ITEMS, create_study, read_png16
    from latentds.testing.synthetic import make_dataset

    tmp = Path(tempfile.mkdtemp(prefix="review-img-"))
    make_dataset(tmp / "src", n_per_class=5, shape=(512, 416), seed=4)
    st = create_study(tmp / "study", tmp / "src", ["bicubic-f8", "bicubic-f4", "kl-f4c4"], n=8, seed=0)

    # scripted readers: Likert from PSNR (dB) of the reconstruction, plus per-reader noise
    db = AnswerDB(st.db_path)
    for reader, noise in (("scripted-1", 0.4), ("scripted-2", 0.6)):
        rid = db.sign_in(reader, sorted(st.trials), st.seed)["id"]
        rng = np.random.default_rng(len(reader) + int(noise * 10))
        for tid in sorted(st.trials):
            o = read_png16(*st.image_path(tid, "original")).astype(float) / 65535
            r = read_png16(*st.image_path(tid, "reconstruction")).astype(float) / 65535
            psnr = 10 * np.log10(1 / max(np.mean((o - r) ** 2), 1e-12))
            base = 1 + (psnr - 28) / 4
            ratings = {k: int(np.clip(np.rint(base + off + rng.normal(0, noise)), 1, 5))
                       for k, off in zip(ITEMS, (0.0, -0.3, 0.2))}
            db.answer(rid, tid, ratings, "", None)
    res = analyze_study(st, tmp / "analysis", n_boot=2000)
    from latentds.review.analyze import write_figure

    write_figure(res["means"], st.codecs, HERE / "review_figure2.png",
                 title="ILLUSTRATION: scripted readers (PSNR-driven), synthetic phantoms")

    srv, url = serve_in_thread(st)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--force-device-scale-factor=1",
              "--window-size=1280,900", f"--user-data-dir={tmp / 'chrome'}"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(url)
        d.find_element(By.ID, "reader-name").send_keys("Dr Example")
        d.find_element(By.ID, "signin").click()
        WebDriverWait(d, 30).until(lambda x: x.execute_script("return document.body.dataset.ready || null"))
        for item, v in (("fidelity", 4), ("diagnostic", 3), ("artifacts", 4)):
            d.find_element(By.ID, f"rate-{item}-{v}").click()
        d.find_element(By.ID, "zoom-1").click()
        d.save_screenshot(str(HERE / "review_rating.png"))
    finally:
        d.quit()
        srv.shutdown()
    print(f"wrote {HERE / 'review_rating.png'} and {HERE / 'review_figure2.png'}")
    print((tmp / "analysis" / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
