"""Data validation through `catsdogs validate` (a subprocess) and `catsdogs run`, on a generated set with planted
problems: an exact copy across splits, a JPEG re-encode at quality 60, a 0.5x resize, a 5% crop, brightness +10%,
a conflicting label, a redundant copy and a class with 3 images.

pHash distances measured on components/sample_data.py's images (2,000 distinct images, 120 edits each):
distinct images are never within 9 bits (one pair at 10, the rest 12 and above; among 20,000, benchmarks/validate.py
found one pair at 6 bits); re-encodes at quality 60,
0.5x resizes and brightness +10% are within 4 bits; 5% centre crops within 8 bits for 97% (10 for the rest).
Hence NEAR_DUPLICATE_DISTANCE = 8.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import ImageEnhance

from components.sample_data import draw_image
from components.validate.near import near_pairs

CLI = [sys.executable, "-m", "pipelines.cli"]


def _jpeg(image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _crop5(image):
    w, h = image.size
    return image.crop((int(w * 0.025), int(h * 0.025), w - int(w * 0.025), h - int(h * 0.025)))


def _edit(data: bytes, image, how: str) -> bytes:
    w, h = image.size
    if how == "copy":
        return data
    if how == "q60":
        return _jpeg(image, 60)
    if how == "half":
        return _jpeg(image.resize((w // 2, h // 2)))
    if how == "crop":
        return _jpeg(_crop5(image))
    return _jpeg(ImageEnhance.Brightness(image).enhance(1.1))


# (planted file, split, label, the original it copies, how, expected kind, scope, conflicting)
PLANTED = [
    ("exact_leak.jpg", "TEST", "cats", "cats/00.jpg", "copy", "exact", "across"),
    ("q60.jpg", "TEST", "cats", "cats/01.jpg", "q60", "near", "across"),
    ("half.jpg", "VALIDATION", "dogs", "dogs/02.jpg", "half", "near", "across"),
    ("crop.jpg", "TRAIN", "dogs", "dogs/03.jpg", "crop", "near", "within"),
    ("bright.jpg", "TEST", "cats", "cats/04.jpg", "bright", "near", "across"),
    ("conflict.jpg", "TRAIN", "cats", "dogs/05.jpg", "copy", "exact", "within"),
    ("redundant.jpg", "TRAIN", "cats", "cats/06.jpg", "copy", "exact", "within"),
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A CSV over 12 cats, 12 dogs and 3 birds (distinct generated images: TRAIN, two of each in TEST) plus the
    planted copies; returns (csv path, {name: path})."""
    root = tmp_path_factory.mktemp("planted")
    paths, rows, images = {}, [], {}
    for index, (label, count) in enumerate((("cats", 12), ("dogs", 12), ("birds", 3))):
        os.makedirs(root / label)
        for i in range(count):
            image = draw_image(index, 3, np.random.default_rng([7, index, i]))
            name = f"{label}/{i:02d}.jpg"
            (root / name).write_bytes(_jpeg(image))
            images[name], paths[name] = image, str(root / name)
            rows.append(("TEST" if i >= count - 2 and count > 3 else "TRAIN", paths[name], label))
    os.makedirs(root / "planted")
    for name, split, label, original, how, _, _ in PLANTED:
        data = _edit((root / original).read_bytes(), images[original], how)
        paths[name] = str(root / "planted" / name)
        with open(paths[name], "wb") as f:
            f.write(data)
        rows.append((split, paths[name], label))
    csv_path = root / "images.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "image_uri", "label"))
        writer.writerows(rows)
    return str(csv_path), paths


def _cli(*args, cwd, timeout=300):
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=timeout)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gated(planted, tmp_path_factory):
    """`catsdogs validate` on the planted set with the default gate: (the finished process, its output folder)."""
    work = tmp_path_factory.mktemp("gated")
    out = work / "report"
    done = _cli("validate", planted[0], "--output-dir", str(out), "--image-size", "224", cwd=work)
    return done, out


def test_validate_finds_every_planted_pair_and_no_other_and_stops_with_one_line(planted, gated):
    csv_path, paths = planted
    done, out = gated
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [line for line in done.stderr.splitlines() if line.startswith("catsdogs validate: error: ")]
    assert len(errors) == 1, done.stderr
    assert "4 pairs across splits (1 exact, 3 near" in errors[0]
    assert "1 pairs with conflicting labels" in errors[0]
    assert str(out / "pairs.csv") in errors[0]

    found = {(row["kind"], row["scope"], frozenset((row["image_a"], row["image_b"])))
             for row in _read_csv(out / "pairs.csv")}
    expected = {(kind, scope, frozenset((paths[name], paths[original])))
                for name, _, _, original, _, kind, scope in PLANTED}
    assert found == expected  # every planted pair, and no pair among the distinct generated images

    import json

    report = json.loads((out / "validation.json").read_text())
    assert report["exact"] == {"redundant": 1, "conflicting": 1, "leakage": 1}
    assert report["near"] == {"within": 1, "across": 3, "conflicting": 0}
    assert report["counts"]["TRAIN"]["birds"] == 3
    assert any(entry.startswith("birds: 3 TRAIN images") for entry in report["too_few"])
    assert any(entry.startswith("birds: no VALIDATION or TEST") for entry in report["too_few"])
    assert report["stats"]["formats"] == {"JPEG": 34}
    from PIL import Image

    sizes = [Image.open(row["image_uri"]).size for row in _read_csv(csv_path)]
    assert report["stats"]["smaller_than_training_size"] == sum(min(size) < 224 for size in sizes) > 0
    assert report["imbalance"] == 4.0  # TRAIN: 12 cats (10 + the redundant and the conflicting copy), 3 birds


def test_validate_fix_drops_held_out_copies_and_quarantines_conflicts(planted, tmp_path):
    csv_path, paths = planted
    out = tmp_path / "report"
    done = _cli("validate", csv_path, "--output-dir", str(out), "--fix", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cleaned = {row["image_uri"]: row["split"] for row in _read_csv(out / "cleaned.csv")}
    original = {row["image_uri"]: row["split"] for row in _read_csv(csv_path)}
    assert cleaned.keys() == original.keys()
    changed = {uri for uri in cleaned if cleaned[uri] != original[uri]}
    # the held-out copies of TRAIN images, and both rows of the conflicting pair
    assert changed == {paths[n] for n in ("exact_leak.jpg", "q60.jpg", "half.jpg", "bright.jpg", "conflict.jpg",
                                          "dogs/05.jpg")}
    assert all(cleaned[uri] == "DISCARD" for uri in changed)
    reasons = {row["image_uri"]: row["reason"] for row in _read_csv(out / "quarantine.csv")}
    assert reasons.keys() == changed
    assert reasons[paths["q60.jpg"]].startswith("leakage: near copy of an image in TRAIN")
    assert reasons[paths["conflict.jpg"]].startswith("conflicting: exact copy")

    # the cleaned CSV passes the gate as it is
    again = _cli("validate", str(out / "cleaned.csv"), "--output-dir", str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_thresholds_are_flags(planted, tmp_path):
    csv_path, _ = planted
    done = _cli("validate", csv_path, "--output-dir", str(tmp_path / "r"), "--max-leakage", "4",
                "--max-conflicting", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _cli("validate", csv_path, "--output-dir", str(tmp_path / "r2"), "--max-leakage", "9",
                "--max-conflicting", "9", "--max-imbalance", "2", cwd=tmp_path)
    assert done.returncode == 2
    assert "TRAIN imbalance 4.0" in done.stderr


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, size=2000, dtype=np.uint64)
    for k in range(60):  # plant pairs at 0..12 bits
        flips = rng.choice(64, size=k % 13, replace=False)
        hashes[1000 + k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    for max_distance in (0, 3, 8, 12):
        i, j, d = near_pairs(hashes, max_distance)
        bi, bj = np.nonzero(np.triu(distance <= max_distance, 1))
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(bi.tolist(), bj.tolist(), strict=True))
        assert (d == distance[i, j]).all()


def test_near_pairs_in_crowded_bands_are_verified_a_bounded_run_at_a_time(monkeypatch):
    """Perceptual hashes crowd into few band values: the candidates are verified MAX_CANDIDATES at a time (memory
    bounded), and still every pair is found."""
    from components.validate import near

    rng = np.random.default_rng(1)
    # 1,500 hashes sharing their top 40 bits, so most bands hold one value: ~n^2 candidates
    hashes = (np.uint64(0xABCDEF1234) << np.uint64(24)) | rng.integers(0, 2**24, size=1500, dtype=np.uint64)
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    expected = np.nonzero(np.triu(distance <= 6, 1))
    steps = []
    real = near._close  # noqa: SLF001 - the test counts the candidate pairs each step of the search checks
    monkeypatch.setattr(near, "MAX_CANDIDATES", 5000)
    monkeypatch.setattr(near, "_close", lambda *a: steps.append(int(a[4].sum())) or real(*a))
    i, j, d = near.near_pairs(hashes, 6)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(*(e.tolist() for e in expected), strict=True))
    assert len(expected[0]) > 1000 and len(steps) > 100
    assert max(steps) <= 5000 + 1500  # the bound, or one query's candidates where a single query has more


def test_content_split_puts_exact_copies_in_one_split(tmp_path):
    """`catsdogs prepare --split-by content`: a photo stored under two names lands in one split."""
    for label in ("cats", "dogs"):
        os.makedirs(tmp_path / "images" / label)
        for i in range(30):
            image = draw_image(label == "dogs", 2, np.random.default_rng([3, label == "dogs", i]))
            (tmp_path / "images" / label / f"{i:02d}.jpg").write_bytes(_jpeg(image))
            (tmp_path / "images" / label / f"copy-{i:02d}.jpg").write_bytes(_jpeg(image))
    for split_by, expect_together in (("content", True), ("path", False)):
        out = tmp_path / f"{split_by}.csv"
        done = _cli("prepare", str(tmp_path / "images"), "--output", str(out), "--split-by", split_by, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        by_content = {}
        for row in _read_csv(out):
            digest = hashlib.sha256(open(row["image_uri"], "rb").read()).hexdigest()
            by_content.setdefault(digest, set()).add(row["split"])
        together = all(len(splits) == 1 for splits in by_content.values())
        assert together == expect_together, split_by


@pytest.mark.slow
def test_run_stops_before_training_on_a_cross_split_copy_and_fix_publishes(tmp_path):
    """`catsdogs run` on a sample with one VALIDATION image copied into TRAIN: the validate step (after convert,
    from its facts) stops the run with one line before training; with --fix the copy is set to DISCARD, left out of
    the records training reads, and a model is published whose held-out images hold no copy of a TRAIN image."""
    import shutil

    from components.sample_data import generate_sample

    images = tmp_path / "images"
    generate_sample(str(images), per_class=40, layout="split")  # enough for a model that beats a constant guess
    leaked = images / "train" / "cats" / "leaked.jpg"
    shutil.copyfile(images / "validation" / "cats" / "cats.00000.jpg", leaked)
    fast = ["--epochs", "3", "--image-size", "32", "--batch-size", "8", "--wandb-mode", "disabled"]

    stopped = _cli("run", str(images), "--workdir", str(tmp_path / "w1"), *fast, cwd=tmp_path)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    gate = [line for line in stopped.stdout.splitlines() if line.startswith("catsdogs run: error: ")]
    assert len(gate) == 1, stopped.stdout
    assert "1 pairs across splits (1 exact, 0 near" in gate[0] and "pairs.csv" in gate[0]
    assert not os.path.exists(tmp_path / "w1" / "logs" / "train.log"), "training ran"
    assert not os.path.exists(tmp_path / "w1" / "models")

    # a guard, not a measurement: the whole run took over 300 s with other jobs loading the 2 cores (load 18)
    fixed = _cli("run", str(images), "--workdir", str(tmp_path / "w2"), "--fix", *fast, cwd=tmp_path, timeout=1200)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert os.path.isdir(tmp_path / "w2" / "models" / "catsdogs" / "1")
    [step] = glob.glob(str(tmp_path / "w2" / "pipeline_root" / "*" / "validate"))
    rows = _read_csv(os.path.join(step, "validation", "cleaned.csv"))
    digest = {row["image_uri"]: hashlib.sha256(open(row["image_uri"], "rb").read()).hexdigest() for row in rows}
    train = {digest[row["image_uri"]] for row in rows if row["split"] == "TRAIN"}
    held_out = [row for row in rows if row["split"] in ("VALIDATION", "TEST")]
    assert held_out and not any(digest[row["image_uri"]] in train for row in held_out)
    assert [row["split"] for row in rows if row["image_uri"].endswith("validation/cats/cats.00000.jpg")] == ["DISCARD"]
    # no image was read twice: validation used conversion's facts, and training read validation's records, which
    # hold every converted record but the dropped copy
    assert json.load(open(os.path.join(step, "validation", "validation.json")))["images_read"] == 0
    [converted] = glob.glob(str(tmp_path / "w2" / "pipeline_root" / "*" / "convert" / "tfrecords"))
    trained_on = _record_uris(os.path.join(step, "tfrecords"))
    assert _record_uris(converted) - trained_on == {str(images / "validation" / "cats" / "cats.00000.jpg")}
    assert json.load(open(os.path.join(step, "tfrecords", "summary.json")))["per_split"]["VALIDATION"] == sum(
        1 for row in rows if row["split"] == "VALIDATION")
    training = json.load(open(glob.glob(str(tmp_path / "w2" / "pipeline_root" / "*" / "train" / "model"
                                             / "training.json"))[0]))
    assert training["data"] == os.path.join(step, "tfrecords")
    # the evaluation report shows the validation's findings: the leaked pair side by side, what --fix dropped
    reports = [os.path.join(folder, name) for folder, _, names in os.walk(tmp_path / "w2" / "pipeline_root")
               for name in names if name == "report"]
    assert len(reports) == 1
    page = open(reports[0]).read()
    assert '<section id="validation">' in page and "set to DISCARD by --fix: leakage" in page
    assert len(_pair_figures(page)) == 1 and str(leaked) in page
    # and validation.html beside the run's other reports, named on the command's output
    copies = glob.glob(str(tmp_path / "w2" / "reports" / "*" / "validation.html"))
    assert len(copies) == 1 and "validation.html" in fixed.stdout and str(leaked) in open(copies[0]).read()


def _record_uris(folder: str) -> set[str]:
    """The image_uri of every record in a convert output folder (jpeg records)."""
    import tensorflow as tf

    return {tf.train.Example.FromString(r).features.feature["image_uri"].bytes_list.value[0].decode()
            for path in glob.glob(os.path.join(folder, "*.tfrecord"))
            for r in tf.data.TFRecordDataset(path).as_numpy_iterator()}


def test_the_component_defaults_are_the_cores():
    from components.validate import core
    from components.validate.component import validate

    inputs = validate.component_spec.inputs
    assert inputs["near_duplicate_distance"].default == core.NEAR_DUPLICATE_DISTANCE
    assert inputs["max_leakage"].default == core.MAX_LEAKAGE
    assert inputs["max_conflicting"].default == core.MAX_CONFLICTING
    assert inputs["max_imbalance"].default == core.MAX_IMBALANCE


def _pair_figures(page: str) -> list[str]:
    import re

    return re.findall(r'<figure class="pair[^"]*">.*?</figure>', page, re.S)


def test_validation_html_shows_the_pairs_side_by_side_with_the_charts_and_statistics(planted, gated):
    """validation.html beside validation.json: each pair across splits or with different labels as two
    thumbnails of its two images, the balance chart, the size histogram and the statistics table."""
    import base64
    import re

    from PIL import Image

    _, paths = planted
    done, out = gated
    page = (out / "validation.html").read_text()
    assert "The gate failed: 4 pairs across splits" in page
    figures = _pair_figures(page)
    # 4 held-out copies of TRAIN images and the conflicting pair; the within-split crop and redundant copy are not
    assert len(figures) == 5, len(figures)
    shown = {frozenset(re.findall(r'alt="([^"]+)"', f)) for f in figures}
    expected = {frozenset((paths[name], paths[original])) for name, _, _, original, _, _, scope in PLANTED
                if scope == "across" or name == "conflict.jpg"}
    assert shown == expected
    for figure in figures:  # two real thumbnails, each of its own image's shape
        sources = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', figure)
        assert len(sources) == 2
        for source, uri in zip(sources, re.findall(r'alt="([^"]+)"', figure), strict=True):
            thumb = Image.open(io.BytesIO(base64.b64decode(source)))
            width, height = Image.open(uri).size
            assert max(thumb.size) == 150 and abs(thumb.size[0] / thumb.size[1] - width / height) < 0.05
    assert "conflicting" in " ".join(f for f in figures if "labels differ" in f)
    assert page.count("<svg") == 2  # balance, sizes
    assert "Balance: images per label and split" in page and "Image sizes (" in page
    assert '<table id="stats">' in page and "<th>images</th><td>34</td>" in page


def test_validation_html_reads_only_the_shown_pairs_images(tmp_path, monkeypatch):
    """Many pairs across splits: the page draws MAX_PAIRS_SHOWN of them and reads only their images."""
    from components import storage
    from components.validate import report

    rows = [("exact", "across", 0, "TRAIN", "cats", f"/nowhere/a{i}.jpg", "TEST", "cats", f"/nowhere/b{i}.jpg")
            for i in range(100)]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("kind", "scope", "distance", "split_a", "label_a", "image_a", "split_b", "label_b",
                         "image_b"))
        writer.writerows(rows)
    import json

    (tmp_path / "validation.json").write_text(json.dumps({
        "rows": 200, "images": 200, "unreadable": 0, "discarded": 0, "counts": {"TRAIN": {"cats": 100}},
        "imbalance": 1.0, "too_few": [], "exact": {"leakage": 100}, "near": {}, "near_duplicate_distance": 8,
        "stats": {}, "fixed": {}, "problems": ["100 pairs across splits"], "leakage": 100, "conflicting": 0}))
    read, real = [], storage.read_bytes

    def read_bytes(uri):
        if not uri.startswith("/nowhere/"):
            return real(uri)
        read.append(uri)
        return b"not an image"

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    page = report.page(str(tmp_path))
    assert len(_pair_figures(page)) == report.MAX_PAIRS_SHOWN < 100
    assert sorted(read) == sorted(u for r in rows[:report.MAX_PAIRS_SHOWN] for u in (r[5], r[8]))
    assert "100 pairs. The first 24 are shown; all are listed in <code>pairs.csv</code>" in page


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.querySelectorAll("#validation .pair img")];
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    drawn: images.filter(i => i.getBoundingClientRect().width >= 100).length,
    svgs: [...document.querySelectorAll("svg")].filter(s => s.getBoundingClientRect().width > 200).length,
  });
  document.body.appendChild(out);
});
</script>"""


def test_validation_html_renders_in_a_browser(gated, tmp_path):
    """Opened in headless Chromium: every thumbnail decodes and is drawn at size, both charts are drawn."""
    import html
    import json
    import re
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        pytest.skip("no chromium: `make test` installs it (images/install-browser.sh)")
    _, out = gated
    probe = tmp_path / "probe.html"
    probe.write_text((out / "validation.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-500:]
    seen = json.loads(html.unescape(found.group(1)))
    assert seen == {"images": 10, "loaded": 10, "drawn": 10, "svgs": 2}


def test_the_output_appears_all_or_nothing_and_a_failed_run_leaves_the_previous_one(planted, tmp_path):
    """A run that fails leaves the previous output as it was; a later run replaces only what validate wrote (a
    stale cleaned.csv of an earlier --fix run goes); a file validate did not write is refused, not overwritten."""
    csv_path, _ = planted
    out = tmp_path / "report"
    fixed = _cli("validate", csv_path, "--output-dir", str(out), "--fix", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"validation.json", "validation.html", "pairs.csv", "cleaned.csv", "quarantine.csv"} <= before.keys()

    broken = tmp_path / "broken.csv"
    broken.write_text("split,image_uri,label\nTRAIN,%s,cats\n" % (tmp_path / "missing.jpg"))
    failed = _cli("validate", str(broken), "--output-dir", str(out), cwd=tmp_path)
    assert failed.returncode == 2 and "no readable image" in failed.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("report")) == ["report"]

    again = _cli("validate", csv_path, "--output-dir", str(out), "--max-leakage", "9", "--max-conflicting", "9",
                 cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (out / "cleaned.csv").exists() and not (out / "quarantine.csv").exists()
    assert (out / "validation.json").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "pairs.csv").write_text("mine\n")
    refused = _cli("validate", csv_path, "--output-dir", str(foreign), cwd=tmp_path)
    assert refused.returncode == 2 and "did not write" in refused.stderr
    assert (foreign / "pairs.csv").read_text() == "mine\n"


def test_a_crash_while_writing_leaves_the_previous_output(planted, tmp_path, monkeypatch):
    """The function beneath: the report page fails after validation.json and pairs.csv were written (staged):
    the previous output stays as it was."""
    from components.validate import core, report

    csv_path, _ = planted
    out = tmp_path / "report"
    core.validate(csv_path, str(out), fix=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_page(folder):
        raise OSError("disk full")

    monkeypatch.setattr(report, "page", broken_page)
    with pytest.raises(OSError, match="disk full"):
        core.validate(csv_path, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
