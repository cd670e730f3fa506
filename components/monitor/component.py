from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def monitor_drift(
    model_base: str,
    logs: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    since: str = "24h",
    until: str = "",
    min_requests: int = 100,
    alpha: float = 0.01,
    fail_on_drift: bool = False,
    wandb_settings: Optional[Dict[str, str]] = None,
) -> str:
    """Compares the requests the server logged in the window with the served version's baseline (drift).

    Args:
        model_base: The served model base (gs://...): its newest version and that version's baseline.json.
        logs: The server's --log-requests folder (requests-*.jsonl).
        metrics: The verdict, the request count, each signal's effect size and Holm-corrected p-value.
        report: monitor.html; monitor.json is written beside it.
        since: Window start: ISO 8601 time or a duration back from now (30m, 24h, 7d); empty: every request.
        until: Window end, as since; empty: now.
        min_requests: Fewer requests give "too few requests" instead of a verdict.
        alpha: Family-wise false-alarm rate of the run (all signals together, Holm).
        fail_on_drift: Fail the step on drift, so that a scheduled run's failure notification is the alert.
        wandb_settings: W&B settings (tracking.settings); when given the step is a W&B run logging the verdict,
            each signal's effect size and p-values.

    Returns:
        The verdict: "drift", "no drift" or "too few requests".
    """
    from components import logs as logging_setup
    from components import storage
    from components.monitor.core import DRIFT, MONITOR_JSON, monitor, signal_key, summary_line, track, write_outputs

    logging_setup.setup()
    done = monitor(model_base, logs, since, until, min_requests, alpha)
    result = done.result
    out_dir = report.uri.rsplit("/", 1)[0]
    json_path, html_path = write_outputs(done, out_dir)
    storage.write_text(report.uri, storage.read_text(html_path))
    metrics.log_metric("verdict", result["verdict"])
    metrics.log_metric("requests", result["requests"])
    metrics.log_metric("version", result["version"])
    for signal in result["signals"]:
        key = signal_key(signal["name"])
        metrics.log_metric(f"effect_{key}", signal["effect"])
        metrics.log_metric(f"p_{key}", signal["adjusted_p"])
    track(done, wandb_settings)
    print(summary_line(result), f"({MONITOR_JSON}: {json_path})", flush=True)
    if fail_on_drift and result["verdict"] == DRIFT:
        raise RuntimeError(summary_line(result))
    return result["verdict"]
