"""Drift monitoring through the user's door: `catsdogs serve MODEL_BASE --log-requests DIR` (a subprocess) answers
POSTed images and logs them, SIGTERM flushes the log, then `catsdogs monitor --model-base ... --logs DIR` judges
the window against the baseline stored with the version. Unshifted traffic must give the same profiles as the
baseline's function (else every window would be a false alarm) and exit 0; greyscale, rotated and darkened
traffic exits 1 naming the moved signal. The trained model and its baseline are test_monitor.py's fixtures."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from test_monitor import _shifted, jpeg, pool, profile, run_monitor, separating_model, served  # noqa: F401
from test_request_log import Served, _post

from components.monitor.core import DRIFT, NO_DRIFT

pytestmark = pytest.mark.slow  # test_monitor.py's model trains for 10 epochs (~40 s here)
BATCH = 50  # images per request: few requests, well under the server's MAX_INSTANCES and body limit


def serve_and_log(model_base: str, encoded: list[bytes], logs: Path) -> list[dict]:
    """POSTs the images to a `catsdogs serve --log-requests logs` subprocess, stops it with SIGTERM (its drain
    writes the log) and returns the logged records in order."""
    server = Served(model_base, "--log-requests", str(logs))
    try:
        for start in range(0, len(encoded), BATCH):
            body = {"instances": [{"b64": base64.b64encode(e).decode()} for e in encoded[start:start + BATCH]]}
            answer = _post(server.url, json.dumps(body).encode())
            assert len(answer["predictions"]) == len(encoded[start:start + BATCH])
    finally:
        server.stop()
    return [json.loads(line) for path in sorted(logs.glob("requests-*.jsonl")) for line in path.open()]


def test_served_unshifted_traffic_is_logged_as_the_baseline_profiles_it_and_stays_quiet(
        served, pool, tmp_path):  # noqa: F811 - test_monitor.py's fixtures
    model_base, loaded = served
    encoded = [jpeg(image) for _, image in pool[-150:]]
    records = serve_and_log(model_base, encoded, tmp_path / "logs")
    assert len(records) == len(encoded)
    # The server's profile of each image is the one the baseline's function (the SavedModel's serving_profile,
    # as evaluation runs it) gives: a difference here is a false drift in every window.
    direct = profile(loaded, encoded)
    assert [r["label"] for r in records] == [d["label"] for d in direct]
    for field in ("probabilities", "embedding", "image_stats"):
        np.testing.assert_allclose([r[field] for r in records], [d[field] for d in direct], rtol=1e-4, atol=1e-4,
                                   err_msg=field)
    done = run_monitor(model_base, tmp_path / "logs", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert result["verdict"] == NO_DRIFT and result["requests"] == len(encoded), result["signals"]


@pytest.mark.parametrize("kind, signal", [
    ("greyscale", "image stat: greyscale"),
    ("rotated 90", "image stat: width"),
    ("darkened by half", "image stat: brightness"),
])
def test_served_shifted_traffic_is_caught_and_the_moved_signal_named(
        served, pool, tmp_path, kind, signal):  # noqa: F811
    model_base, _ = served
    encoded = [jpeg(image) for image in _shifted(kind, pool)]
    assert len(serve_and_log(model_base, encoded, tmp_path / "logs")) == len(encoded)
    done = run_monitor(model_base, tmp_path / "logs", tmp_path / "out")
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert result["verdict"] == DRIFT and signal in result["drifted"], result["signals"]
    assert signal in done.stdout



def history(run_file: Path) -> dict:
    """The last logged value of each key of an offline W&B run (what `wandb sync` uploads), with its name."""
    from test_tracking import run_records

    logged = {}
    for record in run_records(str(run_file)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            logged.update(_name=record.run.display_name, _job_type=record.run.job_type)
        elif kind == "history":
            logged.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                           for item in record.history.item})
    return logged


def test_monitor_logs_its_verdict_p_values_and_effects_to_wandb_offline(served, pool, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    """`catsdogs monitor --wandb-mode offline`: one `monitor` run under OUT/wandb with the verdict, and each
    signal's effect size and p-values as monitor.json has them; without a W&B flag, no run at all."""
    from test_monitor import write_log

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    model_base, loaded = served
    dark = [jpeg(image.point(lambda v: v // 2)) for _, image in pool[:100]]
    logs = write_log(tmp_path / "logs", profile(loaded, dark))
    done = run_monitor(model_base, logs, tmp_path / "out", "--wandb-mode", "offline", "--wandb-project", "drift")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "W&B offline run drift/" in done.stdout
    result = json.loads((tmp_path / "out" / "monitor.json").read_text())
    (run_file,) = (tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb")
    logged = history(run_file)
    assert logged["_name"] == "monitor" and logged["_job_type"] == "monitor"
    assert logged["verdict"] == DRIFT and logged["drift"] == 1 and logged["requests"] == 100
    assert "image stat: brightness" in logged["drifted"]
    brightness = next(s for s in result["signals"] if s["name"] == "image stat: brightness")
    assert logged["p/image_stat_brightness"] == pytest.approx(brightness["adjusted_p"])
    assert logged["p_raw/image_stat_brightness"] == pytest.approx(brightness["p_value"])
    assert logged["effect/image_stat_brightness"] == pytest.approx(brightness["effect"])
    assert brightness["effect"] > 0
    assert {f"effect/{k}" for k in ("class_shares", "confidence", "embedding")} <= set(logged)
    assert not (tmp_path / "home").exists()  # nothing in the home directory

    quiet = run_monitor(model_base, logs, tmp_path / "plain")
    assert quiet.returncode == 1 and not (tmp_path / "plain" / "wandb").exists() and "W&B" not in quiet.stdout


def test_a_tfrecorder_format_baseline_sees_the_images_as_the_server_sees_their_jpegs(
        separating_model, pool, tmp_path):  # noqa: F811
    """TFRecorder records hold decoded pixels, not the JPEG; the baseline must profile them as the server profiles
    the photos it is sent (JPEGs decoded at a DCT scale), or image statistics and embeddings differ from the
    first request on: as PNG the mean colourfulness was ~2 lower on the server's side (measured, 60 images)."""
    import shutil

    from components.convert.pipeline import convert
    from components.model_store import publish_version
    from components.monitor.baseline import write_baseline
    from components.monitor.profile import BASELINE_FILE, IMAGE_STATS

    folder = tmp_path / "images"
    folder.mkdir()
    encoded = [jpeg(image) for _, image in pool[:40]]
    lines = ["split,image_uri,label"]
    train = [next(item for item in pool[40:] if item[0] == k) for k in (0, 1)]  # conversion insists on a TRAIN
    for i, (k, image) in enumerate(pool[:40] + train):
        (folder / f"{i:03d}.jpg").write_bytes(encoded[i] if i < 40 else jpeg(image))
        lines.append(f"{'TEST' if i < 40 else 'TRAIN'},{folder / f'{i:03d}.jpg'},{('cats', 'dogs')[k]}")
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")
    convert(str(tmp_path / "images.csv"), str(tmp_path / "records"), record_format="tfrecorder")
    model = tmp_path / "model"
    shutil.copytree(separating_model, model)
    baseline = write_baseline(str(model), str(tmp_path / "records"), "TEST")
    assert baseline["images"] == 40
    model_base = tmp_path / "models" / "catsdogs"
    publish_version(str(model), str(model_base))
    assert (model_base / "1" / BASELINE_FILE).exists()
    records = serve_and_log(str(model_base), encoded, tmp_path / "logs")
    colourfulness = IMAGE_STATS.index("colourfulness")
    served_mean = np.mean([r["image_stats"][colourfulness] for r in records])
    baseline_mean = np.mean(np.asarray(baseline["rows"]["image_stats"])[:, colourfulness])
    assert abs(served_mean - baseline_mean) < 0.75, (served_mean, baseline_mean)
    embedding = np.sort(np.asarray([r["embedding"] for r in records]), axis=0)  # the same images, any order
    np.testing.assert_allclose(embedding, np.sort(np.asarray(baseline["rows"]["embedding"]), axis=0), atol=0.05)


def test_the_component_logs_its_verdict_to_wandb_when_given_settings(served, pool, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    """The KFP component (kfp.local runs it as its container would) with the pipelines' wandb_settings."""
    from kfp import local
    from test_monitor import write_log

    from components import tracking
    from components.monitor.component import monitor_drift

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in tracking.local_dirs(str(tmp_path / "w")).items():
        monkeypatch.setenv(name, value)
    model_base, loaded = served
    logs = write_log(tmp_path / "logs", profile(loaded, [jpeg(image.convert("L")) for _, image in pool[:100]]))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline_root"))
    task = monitor_drift(model_base=model_base, logs=str(logs), since="",
                         wandb_settings=tracking.settings("drift", "offline", group="monitoring"))
    assert task.outputs["Output"] == DRIFT
    (run_file,) = (tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb")
    logged = history(run_file)
    assert logged["_name"] == "monitor" and logged["verdict"] == DRIFT and logged["requests"] == 100
    assert logged["p/image_stat_greyscale"] == pytest.approx(task.outputs["metrics"].metadata["p_image_stat_greyscale"])
