"""`catsdogs monitor`: a window of the server's request log against the served version's baseline (drift)."""

from __future__ import annotations


def register(sub) -> None:
    from components.monitor.profile import DEFAULT_ALPHA, DEFAULT_MIN_REQUESTS
    from components.tracking import MODES, PROJECT

    p = sub.add_parser("monitor", help="compare the requests a server logged with the served version's baseline "
                                       "(drift); exit 0 no drift, 1 drift, 3 too few requests")
    p.add_argument("--model-base", required=True, help="the model base the server serves (local or gs://)")
    p.add_argument("--logs", required=True, help="the server's --log-requests folder (requests-*.jsonl)")
    p.add_argument("--out", default="monitor", help="folder for monitor.json and monitor.html (default: monitor)")
    p.add_argument("--since", default="", help="window start: ISO 8601 time or a duration back from now "
                                              "(30m, 24h, 7d); default: every logged request")
    p.add_argument("--until", default="", help="window end, as --since; default: now")
    p.add_argument("--version", type=int, default=None, help="the version to judge (default: the newest)")
    p.add_argument("--min-requests", type=int, default=DEFAULT_MIN_REQUESTS,
                   help="fewer requests give 'too few requests' and exit 3 (default %(default)s)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help="false-alarm rate of a run, all signals together (Holm; default %(default)s)")
    wandb = p.add_argument_group("Weights & Biases (a `monitor` run: verdict, p-values, effect sizes; W&B files go "
                                 "under OUT/wandb)")
    wandb.add_argument("--wandb-project", default=None, help=f"(default {PROJECT})")
    wandb.add_argument("--wandb-mode", choices=MODES, default=None,
                       help="default: no W&B run unless --wandb-project is given, then online when WANDB_API_KEY is "
                            "set, else offline (upload later: wandb sync)")
    p.set_defaults(handler=cmd_monitor)


def cmd_monitor(args) -> int:
    import os

    from components import storage, tracking
    from components.monitor.core import monitor, summary_line, track, write_outputs
    from components.monitor.profile import EXIT_STATUS

    settings = None
    if args.wandb_mode or args.wandb_project:
        settings = tracking.settings(args.wandb_project or tracking.PROJECT, args.wandb_mode or tracking.default_mode())
        if settings["mode"] == "online":
            tracking.check_online(os.environ.get("WANDB_API_KEY"))  # before the window is read, not after
        if settings["mode"] != "disabled" and not storage.is_gcs(args.out) and "WANDB_DIR" not in os.environ:
            os.environ.update(tracking.local_dirs(args.out))
    done = monitor(args.model_base, args.logs, args.since, args.until, args.min_requests, args.alpha, args.version)
    json_path, html_path = write_outputs(done, args.out)
    run = track(done, settings)
    print(f"{summary_line(done.result)}; report {html_path}, {json_path}"
          + (f"; W&B {settings['mode']} run {run}" if run else ""), flush=True)
    return EXIT_STATUS[done.result["verdict"]]
