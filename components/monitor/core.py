"""Drift monitoring: a window of the server's logged requests compared with the served version's baseline.

Signals, each a two-sample test with an effect size and a p-value, the p-values Holm-corrected together:
- class shares: the predicted classes' counts, window against baseline (chi-square test of the 2 x K table;
  effect: total variation distance between the shares)
- confidence: the top probability's distribution (Kolmogorov-Smirnov; effect: KS statistic D)
- embedding: the 16-d projected penultimate layer (maximum mean discrepancy with a Gaussian kernel, median
  bandwidth, permutation test; effect: MMD)
- each image statistic: width, height, brightness, colourfulness, greyscale (KS; effect: D, and the shift of the
  median in the stat's own unit)

Verdict: `too few requests` below min_requests, else `drift` when any corrected p-value is below alpha, else
`no drift`. Exit status (for alerting): EXIT_STATUS, no drift 0, drift 1, too few requests 3 (2: bad input).

Memory is bounded whatever the window's size: class counts are exact, the tests run on a uniform sample of at
most WINDOW_SAMPLE requests.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from components import storage
from components.errors import InputError
from components.monitor.baseline import Reservoir
from components.monitor.profile import (
    BASELINE_FILE,
    DECIMALS,
    DEFAULT_ALPHA,
    DEFAULT_MIN_REQUESTS,
    DRIFT,
    EMBEDDING_DIM,
    EXIT_STATUS,
    IMAGE_STATS,
    NO_DRIFT,
    REQUEST_LOG_GLOB,
    TOO_FEW,
)

log = logging.getLogger(__name__)

MONITOR_JSON, MONITOR_HTML = "monitor.json", "monitor.html"
__all__ = ["DRIFT", "EXIT_STATUS", "NO_DRIFT", "TOO_FEW", "monitor", "summary_line", "track", "write_outputs"]
WINDOW_SAMPLE = 20_000  # requests the two-sample tests see (KS on 20,000 resolves a shift of ~1.5%)
MMD_SAMPLE = 1_000  # rows a side for MMD: its kernel matrix is (2n)^2 floats, 32 MB at 1,000
# Smallest p-value 1/2001: below alpha / the number of signals (0.01 / 8), so the embedding alone can raise drift
# (with 500 it could not: 8 x 1/501 > 0.01). One (2n)^2 x 2001 matmul: ~1 s at n = 1,000 on 2 cores.
MMD_PERMUTATIONS = 2000


@dataclass
class Signal:
    name: str  # "class shares", "confidence", "embedding", "image stat: brightness", ...
    test: str
    effect: float  # the test's effect size (see the module's docstring)
    p_value: float
    adjusted_p: float = 1.0  # Holm-corrected
    drifted: bool = False
    detail: dict = field(default_factory=dict)


@dataclass
class Window:
    """The logged requests of one version in the monitoring window."""
    requests: int = 0  # every matching request (counted exactly)
    class_counts: dict = field(default_factory=dict)
    first: str = ""
    last: str = ""
    other_versions: int = 0  # requests in the time window answered by another version
    rows: list = field(default_factory=list)  # a uniform sample of at most WINDOW_SAMPLE log records


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """--since: an ISO 8601 time (UTC if it names no zone) or a duration back from now: 30m, 24h, 7d."""
    if not text:
        return None
    now = now or dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return now - dt.timedelta(**{unit: float(match[1])})
    try:
        return _utc(dt.datetime.fromisoformat(text))
    except ValueError:
        raise InputError(f"--since {text!r}: give an ISO 8601 time (2026-12-01T00:00:00Z) or a duration back "
                         "from now (30m, 24h, 7d)") from None


def _utc(time: dt.datetime) -> dt.datetime:
    return time.replace(tzinfo=dt.UTC) if time.tzinfo is None else time


def log_files(logs: str) -> list[str]:
    pattern = REQUEST_LOG_GLOB
    files = sorted(f for f in storage.list_dir(logs) if re.fullmatch(pattern.replace("*", ".*"), f))
    return [storage.join(logs, f) for f in files]


def _lines(path: str):
    """A log file's lines, streamed when local (a server's file can be large); a gs:// object is one batch."""
    if storage.is_gcs(path):
        yield from storage.read_text(path).splitlines()
        return
    with open(path, encoding="utf-8") as f:
        yield from f


def read_window(logs: str, version: str, since: dt.datetime | None = None, until: dt.datetime | None = None,
                sample: int = WINDOW_SAMPLE) -> Window:
    """The requests answered by `version` in [since, until) from the requests-*.jsonl files under logs; a line
    that is not a complete record is an InputError naming its file and line."""
    if not storage.exists(logs):
        raise InputError(f"--logs {logs}: no such folder")
    files = log_files(logs)
    if not files:
        raise InputError(f"--logs {logs}: no {REQUEST_LOG_GLOB} files there (is it the server's --log-requests?)")
    window, reservoir = Window(), Reservoir(sample, seed=1)
    for path in files:
        for number, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                time = _utc(dt.datetime.fromisoformat(record["time"]))
                label, record_version = record["label"], str(record["version"])
                if len(record["embedding"]) != EMBEDDING_DIM or len(record["image_stats"]) != len(IMAGE_STATS):
                    raise ValueError("embedding or image_stats of the wrong length")
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path} line {number}: not a request record ({e})") from None
            if (since and time < since) or (until and time >= until):
                continue
            if record_version != version:
                window.other_versions += 1
                continue
            window.requests += 1
            window.class_counts[label] = window.class_counts.get(label, 0) + 1
            stamp = time.isoformat()
            window.first = min(window.first or stamp, stamp)
            window.last = max(window.last, stamp)
            reservoir.add({"label": label, "confidence": max(record["probabilities"]),
                           "embedding": record["embedding"], "image_stats": record["image_stats"],
                           **({"image": record["image"]} if "image" in record else {})})
    window.rows = reservoir.rows
    return window


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error rate), in the given order."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = MMD_PERMUTATIONS, seed: int = 0
             ) -> tuple[float, float]:
    """(MMD, permutation p-value) between samples x and y: a Gaussian kernel with the median pairwise distance as
    bandwidth; every permutation is one column of a matrix product, so they cost one (2n)^2 x permutations matmul."""
    z = np.concatenate([x, y]).astype(np.float64)
    squared = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    median = np.median(squared[np.triu_indices(len(z), 1)])
    kernel = np.exp(-squared / max(median, 1e-12))
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    sides = np.zeros((len(z), permutations + 1), bool)
    sides[:n, 0] = True
    for k in range(1, permutations + 1):
        sides[rng.permutation(len(z))[:n], k] = True
    weights = np.where(sides, 1.0 / n, -1.0 / m)  # mean over x minus mean over y
    mmd2 = np.einsum("ik,ik->k", weights, kernel @ weights)
    p_value = float((1 + np.sum(mmd2[1:] >= mmd2[0])) / (permutations + 1))
    return float(np.sqrt(max(mmd2[0], 0.0))), p_value


def _sample(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(rows) <= size:
        return rows
    return rows[np.random.default_rng(seed).choice(len(rows), size, replace=False)]


def compare(baseline: dict, window: Window, alpha: float = DEFAULT_ALPHA) -> list[Signal]:
    """Every signal's test, Holm-corrected together; `drifted` where the corrected p-value is below alpha."""
    classes = list(baseline["classes"])
    classes += sorted(set(window.class_counts) - set(classes))  # a label the baseline never predicted
    base_counts = np.array(list(baseline["class_counts"]) + [0] * (len(classes) - len(baseline["classes"])), float)
    window_counts = np.array([window.class_counts.get(c, 0) for c in classes], float)
    seen = (base_counts + window_counts) > 0
    table = np.stack([base_counts[seen], window_counts[seen]])
    base_shares, window_shares = base_counts / base_counts.sum(), window_counts / max(window_counts.sum(), 1)
    if table.shape[1] > 1:
        chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    else:
        chi2, p = 0.0, 1.0
    signals = [Signal("class shares", "chi-square", float(0.5 * np.abs(base_shares - window_shares).sum()), float(p),
                      detail={"classes": classes, "baseline": base_shares.round(4).tolist(),
                              "window": window_shares.round(4).tolist(), "chi2": float(chi2)})]
    rows = baseline["rows"]

    def column(name: str, side) -> np.ndarray:  # both sides at the same precision
        values = side[name] if isinstance(side, dict) else [r[name] for r in side]
        return np.round(np.asarray(values, float), DECIMALS)

    base_conf, conf = column("confidence", rows), column("confidence", window.rows)
    ks = stats.ks_2samp(base_conf, conf)
    signals.append(Signal("confidence", "Kolmogorov-Smirnov", float(ks.statistic), float(ks.pvalue), detail={
        "baseline_median": float(np.median(base_conf)), "window_median": float(np.median(conf))}))
    base_emb, emb = column("embedding", rows), column("embedding", window.rows)
    mmd, p = mmd_test(_sample(base_emb, MMD_SAMPLE, 2), _sample(emb, MMD_SAMPLE, 3))
    signals.append(Signal("embedding", "MMD permutation", mmd, p))
    base_stats, window_stats = column("image_stats", rows), column("image_stats", window.rows)
    for i, name in enumerate(baseline.get("image_stats_names", IMAGE_STATS)):
        ks = stats.ks_2samp(base_stats[:, i], window_stats[:, i])
        signals.append(Signal(f"image stat: {name}", "Kolmogorov-Smirnov", float(ks.statistic), float(ks.pvalue),
                              detail={"baseline_median": float(np.median(base_stats[:, i])),
                                      "window_median": float(np.median(window_stats[:, i]))}))
    for signal, adjusted in zip(signals, holm([s.p_value for s in signals])):
        signal.adjusted_p, signal.drifted = adjusted, adjusted < alpha
    return signals


def read_baseline(model_dir: str) -> dict:
    path = storage.join(model_dir, BASELINE_FILE)
    if not storage.exists(path):
        raise InputError(f"{path} not found: the version was evaluated before drift baselines existed, or its "
                         "SavedModel has no serving_profile signature; retrain to get one")
    return json.loads(storage.read_text(path))


def served_version(model_base: str, version: int | None = None) -> tuple[int, str]:
    """(version, folder): the given version, else the newest under model_base (the one a server serves)."""
    from components.model_store import newest_version, version_candidates

    if version is not None:
        for number, path in version_candidates(model_base):
            if number == version:
                return number, path
        raise InputError(f"--version {version}: no such version under {model_base}")
    newest = newest_version(model_base)
    if newest is None:
        raise InputError(f"--model-base {model_base}: no model versions there")
    return newest


@dataclass
class Monitoring:
    result: dict  # what monitor.json holds: verdict, window, every signal
    baseline: dict
    window: Window


def monitor(model_base: str, logs: str, since: str = "", until: str = "", min_requests: int = DEFAULT_MIN_REQUESTS,
            alpha: float = DEFAULT_ALPHA, version: int | None = None) -> Monitoring:
    """The served version's baseline against the window of its logged requests."""
    if min_requests < 1:
        raise InputError(f"--min-requests {min_requests}: give 1 or more")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha}: give a number between 0 and 1")
    number, model_dir = served_version(model_base, version)
    baseline = read_baseline(model_dir)
    start, end = parse_since(since), parse_since(until)
    window = read_window(logs, str(number), start, end)
    result = {"verdict": TOO_FEW, "version": number, "model": model_dir, "logs": logs,
              "since": start.isoformat() if start else None, "until": end.isoformat() if end else None,
              "requests": window.requests, "other_versions": window.other_versions, "first": window.first,
              "last": window.last, "min_requests": min_requests, "alpha": alpha, "correction": "Holm",
              "baseline_images": baseline["images"], "signals": [], "drifted": []}
    if window.requests < min_requests:
        log.info("%d requests for version %d (min %d): too few to judge", window.requests, number, min_requests)
        return Monitoring(result, baseline, window)
    signals = compare(baseline, window, alpha)
    drifted = [s.name for s in signals if s.drifted]
    result.update(verdict=DRIFT if drifted else NO_DRIFT, signals=[asdict(s) for s in signals], drifted=drifted)
    return Monitoring(result, baseline, window)


def write_outputs(done: Monitoring, out_dir: str) -> tuple[str, str]:
    """monitor.json and monitor.html under out_dir; returns their paths."""
    from components.monitor.report import html_report

    json_path, html_path = storage.join(out_dir, MONITOR_JSON), storage.join(out_dir, MONITOR_HTML)
    storage.write_text(json_path, json.dumps(done.result, indent=1))
    storage.write_text(html_path, html_report(done.result, done.baseline, done.window))
    return json_path, html_path


def summary_line(result: dict) -> str:
    if result["verdict"] == TOO_FEW:
        return (f"{TOO_FEW}: {result['requests']} requests for version {result['version']} "
                f"(--min-requests {result['min_requests']})")
    if result["verdict"] == DRIFT:
        moved = ", ".join(f"{s['name']} (p={s['adjusted_p']:.2g}, effect {s['effect']:.3g})"
                          for s in result["signals"] if s["drifted"])
        return f"{DRIFT} in {result['requests']} requests for version {result['version']}: {moved}"
    return f"{NO_DRIFT} in {result['requests']} requests for version {result['version']}"


def signal_key(name: str) -> str:
    """A signal's name as a metric key: image stat: brightness -> image_stat_brightness."""
    return re.sub(r"\W+", "_", name).strip("_")


def tracked_metrics(result: dict) -> dict:
    """What a monitoring run logs to W&B: the verdict (also as drift 0/1, to chart and alert on), the request
    count, and each signal's effect size, Holm-corrected and raw p-values."""
    metrics = {"verdict": result["verdict"], "drift": int(result["verdict"] == DRIFT), "requests": result["requests"],
               "version": result["version"], "drifted": ", ".join(result["drifted"])}
    for signal in result["signals"]:
        key = signal_key(signal["name"])
        metrics.update({f"effect/{key}": signal["effect"], f"p/{key}": signal["adjusted_p"],
                        f"p_raw/{key}": signal["p_value"]})
    return metrics


def track(done: Monitoring, wandb_settings: dict | None) -> str | None:
    """Logs the monitoring run to W&B as a `monitor` run (nothing when the settings are None or disabled); returns
    the run's project/id."""
    from components import tracking

    config = {k: done.result[k] for k in ("model", "version", "logs", "since", "until", "min_requests", "alpha")}
    with tracking.step_run("monitor", "monitor", wandb_settings, config) as run:
        if run.run is None:
            return None
        run.run.log(tracked_metrics(done.result))  # the run summary keeps them
        return f"{run.run.project}/{run.run.id}"
