"""The evaluation report as a person sees it: opened in headless Chromium (installed by `make test` through
images/install-browser.sh), screenshotted, and checked to be a real rendering with its pictures loaded."""

import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from components.evaluate.core import evaluate
from components.evaluate.report import html_report
from components.model_store import training_info

WIDTH, HEIGHT = 1200, 1400
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Appended to a copy of the report: once everything has loaded, writes what the browser made of the page into
# the DOM, where --dump-dom shows it (the report itself carries no script: the Vertex UI's viewer need not run any).
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.querySelectorAll("#gallery img")];
  const box = document.getElementById("gallery").getBoundingClientRect();
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).map(i => [i.naturalWidth, i.naturalHeight]),
    gallery: [box.left, box.top, box.right, box.bottom],
    svgs: [...document.querySelectorAll("svg")].filter(s => s.getBoundingClientRect().width > 100).length,
    issues: [...document.querySelectorAll("#label-issue-gallery img")].filter(i => i.naturalWidth > 0).length,
    sections: ["calibration", "temperature-scaling", "threshold", "label-issues"].filter(
      id => document.getElementById(id) && document.getElementById(id).getBoundingClientRect().height > 0),
    pr: !!document.querySelector("#threshold ~ .charts svg"),
  });
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium: `make test` installs it (images/install-browser.sh, as root on Debian/Ubuntu)")


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: the tests run as root on CI; --disable-gpu: no GPU process on headless machines.
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WIDTH},{HEIGHT}", *args], capture_output=True, text=True, timeout=120,
                          check=True)


@pytest.fixture(scope="module")
def report(trained_model, records, tmp_path_factory):
    result = evaluate(trained_model, records)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html_report(result, training_info(trained_model)["history"]))
    return path, result


def test_report_renders_in_a_browser_with_its_thumbnails_loaded(report, tmp_path):
    from PIL import Image

    browser = _browser()
    path, result = report
    assert len(result.gallery) >= 4

    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page's load handler did not run: {dom[-500:]}"
    seen = json.loads(html.unescape(found.group(1)))
    pictures = [p for e in result.gallery for p in (e.thumbnail, e.saliency) if p]  # saliency under the first
    assert seen["images"] == len(pictures) > len(result.gallery)
    assert len(seen["loaded"]) == len(pictures)  # every thumbnail and saliency overlay decoded
    sizes = [Image.open(io.BytesIO(p)).size for p in pictures]
    assert [tuple(s) for s in seen["loaded"]] == sizes
    assert seen["issues"] == len(result.issue_gallery)
    assert seen["svgs"] == 5  # ROC, per-class, reliability, precision-recall, training curves at a readable size
    # Temperature scaling (the session's model is trained with --calibrate, the default) and the threshold.
    assert seen["sections"] == ["calibration", "temperature-scaling", "threshold", "label-issues"] and seen["pr"]

    shot = tmp_path / "report.png"
    _chromium(browser, f"--screenshot={shot}", path.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    pixels = np.asarray(image, dtype=np.float32)
    assert pixels.std() > 20  # not a blank page
    left, top, right, bottom = (int(v) for v in seen["gallery"])
    assert 0 <= top < bottom <= HEIGHT and right - left > 200
    gallery = pixels[top:bottom, left:right]
    # The thumbnails are photos of coloured shapes: far from the white page and its grey text, many colours.
    colourful = (gallery.max(axis=2) - gallery.min(axis=2)) > 40
    assert colourful.mean() > 0.1, colourful.mean()
    assert len(np.unique(gallery.reshape(-1, 3).astype(np.uint8), axis=0)) > 500


# The README's screenshot (docs/report.png) is this run's report, as its caption says.
README_RUN = ["--per-class", "100", "--epochs", "3", "--image-size", "64"]


@pytest.mark.slow
def test_the_report_of_a_readme_sized_run_renders_every_section_and_retakes_the_screenshot(tmp_path):
    """CATSDOGS_UPDATE_SCREENSHOT=1 copies the screenshot to docs/report.png (else it stays in tmp_path)."""
    import glob
    import os
    import sys
    from pathlib import Path

    from PIL import Image

    browser = _browser()
    workdir = tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--workdir", str(workdir), *README_RUN],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    [page] = glob.glob(str(workdir / "reports" / "*" / "report.html"))
    text = Path(page).read_text()
    for section in ('id="gallery"', 'id="saliency"', 'id="calibration"', 'id="temperature-scaling"',
                    'id="threshold"', 'id="label-issues"', 'id="model-card"'):
        assert section in text, section
    shot = tmp_path / "report.png"
    _chromium(browser, f"--screenshot={shot}", Path(page).as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (HEIGHT, WIDTH, 3) and pixels.std() > 20
    if os.environ.get("CATSDOGS_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, Path(__file__).resolve().parent.parent / "docs" / "report.png")
