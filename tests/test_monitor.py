"""Drift monitoring through `catsdogs monitor`: requests profiled by a real trained SavedModel's serving_profile
signature, written as the server logs them, compared with a baseline of held-out images of the same kind.
Unshifted windows stay quiet; greyscale, rotated, darkened and class-mixed traffic is caught by the named signal."""

import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.monitor.baseline import build_baseline, profile_images, write_baseline
from components.monitor.core import DRIFT, NO_DRIFT, TOO_FEW, monitor
from components.monitor.profile import BASELINE_FILE, EMBEDDING_DIM, IMAGE_STATS, PROFILE_SIGNATURE
from components.sample_data import draw_image

CLASSES = ("cats", "dogs")
CATSDOGS = [sys.executable, "-m", "pipelines.cli"]


def jpeg(image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def images(seed: int, per_class: int) -> list[tuple[int, object]]:
    """(class index, PIL image) drawn as `catsdogs sample-data` draws them, shuffled; `seed` picks the set."""
    drawn = [(k, draw_image(k, len(CLASSES), np.random.default_rng([seed, k, i])))
             for k in range(len(CLASSES)) for i in range(per_class)]
    order = np.random.default_rng(seed).permutation(len(drawn))
    return [drawn[i] for i in order]


def profile(loaded, encoded: list[bytes]) -> list[dict]:
    batches = (encoded[i:i + 64] for i in range(0, len(encoded), 64))
    return list(profile_images(loaded, batches))


def write_log(folder: Path, rows: list[dict], version: str = "1") -> Path:
    """rows as the server logs them: one JSON line per image in requests-*.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with open(folder / "requests-00000.jsonl", "w") as f:
        for i, row in enumerate(rows):
            time = (start + dt.timedelta(seconds=i)).isoformat()
            f.write(json.dumps({"time": time, "version": version, **row}) + "\n")
    return folder


@pytest.fixture(scope="module")
def separating_model(records, tmp_path_factory) -> str:
    """A SavedModel that tells the sample's classes apart (the session's two-epoch model answers one class for
    every image, so a class mix could not move its predicted shares): 10 epochs of batch 8 at 32 px."""
    from components.train.core import TrainConfig, train

    model_dir = str(tmp_path_factory.mktemp("separating") / "saved_model")
    train(records, model_dir, TrainConfig(epochs=10, image_size=32, batch_size=8))
    return model_dir


@pytest.fixture(scope="module")
def served(separating_model, tmp_path_factory):
    """(model base with version 1 and its baseline of 300 held-out-like images, the loaded SavedModel)."""
    import tensorflow as tf

    from components.model_store import publish_version

    model_base = str(tmp_path_factory.mktemp("models") / "catsdogs")
    publish_version(separating_model, model_base)
    loaded = tf.saved_model.load(separating_model)
    rows = profile(loaded, [jpeg(image) for _, image in images(seed=101, per_class=150)])
    predicted = [row["label"] for row in rows]
    assert 0.2 < predicted.count("cats") / len(predicted) < 0.8, "the model must tell the classes apart"
    Path(model_base, "1", BASELINE_FILE).write_text(json.dumps(build_baseline(rows, list(CLASSES), "TEST")))
    return model_base, loaded


@pytest.fixture(scope="module")
def pool():
    """1,200 new images of the same kind: (class, PIL image)."""
    return images(seed=202, per_class=600)


def run_monitor(model_base, logs, out, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([*CATSDOGS, "monitor", "--model-base", model_base, "--logs", str(logs), "--out", str(out),
                           *flags], capture_output=True, text=True, timeout=300)


def test_serving_profile_answers_as_serving_default_plus_embedding_and_image_stats(served):
    from PIL import Image

    _, loaded = served
    assert PROFILE_SIGNATURE in loaded.signatures
    colour = draw_image(0, 2, np.random.default_rng(5))
    grey = colour.convert("L")
    dark = colour.point(lambda v: v // 2)
    batch = [jpeg(colour), jpeg(grey), jpeg(dark), jpeg(colour.transpose(Image.Transpose.ROTATE_90))]
    out = {k: v.numpy() for k, v in loaded.signatures[PROFILE_SIGNATURE](image_bytes=batch).items()}
    default = loaded.signatures["serving_default"](image_bytes=batch)
    np.testing.assert_allclose(out["probabilities"], default["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
    assert out["embedding"].shape == (4, EMBEDDING_DIM) and np.isfinite(out["embedding"]).all()
    stats = dict(zip(IMAGE_STATS, out["image_stats"].T))
    width, height = colour.size
    assert stats["width"].tolist() == [width, width, width, height]  # the size before the model's resize
    assert stats["height"].tolist() == [height, height, height, width]
    assert stats["greyscale"].tolist() == [0, 1, 0, 0]
    assert stats["colourfulness"][1] < 1 < 10 < stats["colourfulness"][0]
    assert stats["brightness"][2] == pytest.approx(stats["brightness"][0] / 2, rel=0.05)


def test_evaluation_baseline_is_written_beside_the_model(trained_model, records, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    written = write_baseline(str(model), records, "TEST")
    stored = json.loads((model / BASELINE_FILE).read_text())
    assert stored == json.loads(json.dumps(written))
    assert stored["images"] == sum(stored["class_counts"]) == len(stored["rows"]["label"]) > 0
    assert np.asarray(stored["rows"]["embedding"]).shape == (stored["images"], EMBEDDING_DIM)


def test_unshifted_windows_stay_quiet(served, pool, tmp_path):
    """19 of 20 independent windows of 60 unshifted requests raise no alarm (alpha 0.01: expect none)."""
    model_base, loaded = served
    rows = profile(loaded, [jpeg(image) for _, image in pool])
    verdicts = []
    for w in range(20):
        logs = write_log(tmp_path / f"w{w}", rows[w * 60:(w + 1) * 60])
        result = monitor(model_base, str(logs), min_requests=50).result
        verdicts.append((result["verdict"], result["drifted"]))
    assert sum(v == NO_DRIFT for v, _ in verdicts) >= 19, verdicts
    assert all(v in (NO_DRIFT, DRIFT) for v, _ in verdicts)


def _shifted(kind: str, pool):
    from PIL import Image

    if kind == "class mix 95/5":
        cats = [image for k, image in pool if k == 0][:95]
        dogs = [image for k, image in pool if k == 1][:5]
        return cats + dogs
    picked = [image for _, image in pool[:100]]
    change = {"greyscale": lambda i: i.convert("L"),
              "rotated 90": lambda i: i.transpose(Image.Transpose.ROTATE_90),
              "darkened by half": lambda i: i.point(lambda v: v // 2)}[kind]
    return [change(image) for image in picked]


@pytest.mark.parametrize("kind, signal", [
    ("greyscale", "image stat: greyscale"),
    ("rotated 90", "image stat: width"),
    ("darkened by half", "image stat: brightness"),
    ("class mix 95/5", "class shares"),
])
def test_each_planted_shift_is_detected_and_named(served, pool, tmp_path, kind, signal):
    model_base, loaded = served
    logs = write_log(tmp_path / "logs", profile(loaded, [jpeg(image) for image in _shifted(kind, pool)]))
    done = run_monitor(model_base, logs, tmp_path / "out")
    assert done.returncode == 1, done.stderr
    result = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert result["verdict"] == DRIFT and signal in result["drifted"], result["signals"]
    assert signal in done.stdout and "drift" in done.stdout
    report = (tmp_path / "out" / "monitor.html").read_text()
    assert f"{signal} &mdash; drift" in report and report.count("<svg") == 3 + len(IMAGE_STATS)


def test_unshifted_traffic_through_the_command_exits_0(served, pool, tmp_path):
    model_base, loaded = served
    logs = write_log(tmp_path / "logs", profile(loaded, [jpeg(image) for _, image in pool[-150:]]))
    done = run_monitor(model_base, logs, tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "out" / "monitor.json").read_text())["verdict"] == NO_DRIFT


def test_too_few_requests_gives_no_verdict(served, pool, tmp_path):
    model_base, loaded = served
    rows = profile(loaded, [jpeg(image) for _, image in pool[:30]])
    logs = write_log(tmp_path / "logs", rows)
    write_log(tmp_path / "other", rows, version="7")  # another version's requests do not count
    os.replace(tmp_path / "other" / "requests-00000.jsonl", logs / "requests-00001.jsonl")
    done = run_monitor(model_base, logs, tmp_path / "out", "--min-requests", "31")
    assert done.returncode == 3, done.stderr
    result = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert result["verdict"] == TOO_FEW and result["requests"] == 30 and result["other_versions"] == 30
    assert TOO_FEW in done.stdout


def test_since_leaves_out_older_requests(served, pool, tmp_path):
    model_base, loaded = served
    logs = write_log(tmp_path / "logs", profile(loaded, [jpeg(image) for _, image in pool[:40]]))
    done = run_monitor(model_base, logs, tmp_path / "out", "--min-requests", "5", "--since", "2026-12-01T00:00:30Z")
    assert done.returncode in (0, 1), done.stderr
    assert json.loads((tmp_path / "out" / "monitor.json").read_text())["requests"] == 10


@pytest.mark.parametrize("problem, flags, message", [
    ("bad line", [], "requests-00000.jsonl line 2: not a request record"),
    ("no logs", [], "no requests-*.jsonl files"),
    ("", ["--since", "yesterday"], "--since 'yesterday'"),
    ("", ["--min-requests", "0"], "--min-requests 0"),
])
def test_bad_input_is_one_line_naming_it(served, tmp_path, problem, flags, message):
    model_base, _ = served
    logs = tmp_path / "logs"
    logs.mkdir()
    if problem != "no logs":
        row = {"label": "cats", "probabilities": [0.4, 0.6], "embedding": [0.0] * EMBEDDING_DIM,
               "image_stats": [1.0] * len(IMAGE_STATS)}
        write_log(logs, [row])
        if problem == "bad line":
            with open(logs / "requests-00000.jsonl", "a") as f:
                f.write('{"time": "2026-12-01T00:00:00Z", "label"\n')
    done = run_monitor(model_base, logs, tmp_path / "out", *flags)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("catsdogs monitor: error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_component_reports_the_verdict_in_metrics_and_html(served, pool, tmp_path):
    """The KFP component run by kfp.local (a subprocess, as its container runs it), on greyscale traffic."""
    from kfp import local

    from components.monitor.component import monitor_drift

    model_base, loaded = served
    logs = write_log(tmp_path / "logs", profile(loaded, [jpeg(image.convert("L")) for _, image in pool[:100]]))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline_root"))
    task = monitor_drift(model_base=model_base, logs=str(logs), since="")
    assert task.outputs["Output"] == DRIFT
    metrics = task.outputs["metrics"].metadata
    assert metrics["verdict"] == DRIFT and metrics["requests"] == 100
    assert metrics["p_image_stat_greyscale"] < 0.01 and 0 < metrics["effect_image_stat_greyscale"] <= 1
    assert "image stat: greyscale &mdash; drift" in Path(task.outputs["report"].path).read_text()


def test_schedule_runs_the_monitor_pipeline(tmp_path):
    """`catsdogs schedule --pipeline monitor`: the request it would send (no --images needed), with the
    pipeline's parameters."""
    done = subprocess.run([*CATSDOGS, "schedule", "--pipeline", "monitor", "--project", "my-project", "--region",
                           "us-central1", "--cron", "0 6 * * *", "--pipeline-root", "gs://b/root",
                           "--param", "model_base=gs://b/models/catsdogs", "--param", "logs=gs://b/request-logs",
                           "--dry-run"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["schedule"]["createPipelineJobRequest"]["pipelineJob"]
    assert job["templateName"] == "catsdogs-monitor"
    assert job["runtimeConfig"]["parameterValues"] == {"model_base": "gs://b/models/catsdogs",
                                                       "logs": "gs://b/request-logs"}


def test_drift_report_renders_in_a_browser(served, pool, tmp_path):
    """monitor.html as a person sees it (headless Chromium, skipped without it): the verdict in red, both series
    of the plots drawn. MONITOR_SCREENSHOT=docs/monitor.png keeps the screenshot (the README's)."""
    import shutil

    from PIL import Image

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        pytest.skip("no chromium: `make test` installs it (images/install-browser.sh)")
    model_base, loaded = served
    darker = [image.point(lambda v: v * 2 // 3) for _, image in pool[:150]]
    logs = write_log(tmp_path / "logs", profile(loaded, [jpeg(image) for image in darker]))
    assert run_monitor(model_base, logs, tmp_path / "out").returncode == 1
    shot = tmp_path / "monitor.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1100,900", f"--screenshot={shot}", (tmp_path / "out" / "monitor.html").as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    assert pixels.shape == (900, 1100, 3) and pixels.std() > 20

    def share(rgb: str) -> float:
        colour = np.array([int(rgb[i:i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(pixels - colour).sum(axis=2) < 30).mean())

    assert share("#b00020") > 0.0005  # the verdict and the drifted plots' frames
    assert share("#4c78a8") > 0.001 and share("#e45756") > 0.001  # baseline and requests drawn
    if os.environ.get("MONITOR_SCREENSHOT"):
        Image.open(shot).convert("RGB").quantize(128).save(os.environ["MONITOR_SCREENSHOT"], optimize=True)


def _synthetic(n: int, rng, embedding_shift: float = 0.0) -> list[dict]:
    q = rng.beta(2, 2, n)
    stats = np.stack([rng.integers(340, 461, n), rng.integers(260, 341, n), rng.uniform(0.3, 0.6, n),
                      rng.gamma(4, 8, n), np.zeros(n)], axis=1)
    return [{"label": CLASSES[int(p > 0.5)], "probabilities": [1 - p, p],
             "embedding": rng.normal(embedding_shift, 1.0, EMBEDDING_DIM).tolist(), "image_stats": s.tolist()}
            for p, s in zip(q.tolist(), stats)]


def test_an_embedding_shift_alone_raises_drift_naming_only_the_embedding():
    """MMD's permutation p-value must be able to get below alpha after Holm over all 8 signals on its own."""
    from components.monitor.core import Window, compare

    rng = np.random.default_rng(0)
    baseline = build_baseline(_synthetic(2000, rng), list(CLASSES))
    for shift, drifted in ((0.0, []), (0.6, ["embedding"])):
        rows = _synthetic(300, rng, shift)
        counts = {c: sum(r["label"] == c for r in rows) for c in CLASSES}
        window = Window(requests=len(rows), class_counts=counts,
                        rows=[{**r, "confidence": max(r["probabilities"])} for r in rows])
        assert [s.name for s in compare(baseline, window) if s.drifted] == drifted


def test_holm_adjusts_as_by_hand():
    from components.monitor.core import holm

    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


@pytest.mark.slow
def test_a_version_deployed_by_catsdogs_run_carries_its_baseline_and_can_be_monitored(tmp_path):
    """The whole path: `catsdogs run` evaluates (writing baseline.json beside the model) and publishes the version
    with it; requests profiled by that version, darkened, are then caught by `catsdogs monitor`."""
    import tensorflow as tf

    workdir = tmp_path / "w"
    done = subprocess.run([*CATSDOGS, "run", "--workdir", str(workdir), "--per-class", "40", "--epochs", "3",
                           "--image-size", "32", "--batch-size", "8"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    version = workdir / "models" / "catsdogs" / "1"
    baseline = json.loads((version / BASELINE_FILE).read_text())
    assert baseline["split"] == "TEST" and baseline["images"] == sum(baseline["class_counts"]) > 0
    loaded = tf.saved_model.load(str(version))
    dark = [jpeg(image.point(lambda v: v // 2)) for _, image in images(seed=303, per_class=60)]
    logs = write_log(tmp_path / "logs", profile(loaded, dark))
    done = run_monitor(str(workdir / "models" / "catsdogs"), logs, tmp_path / "out")
    assert done.returncode == 1 and "image stat: brightness" in done.stdout, done.stdout + done.stderr
