"""Apache Beam plumbing that conversion and batch prediction share: Dataflow's options, the local runner, checks
of the options a user passes after `--`, and what a dry run prints (options, steps, job-graph size)."""

from __future__ import annotations

import contextlib
import io

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from components.errors import InputError


def dataflow_args(project: str, region: str, temp_location: str, sdk_container_image: str = "",
                  service_account: str = "", machine_type: str = "", max_workers: int = 0, job_name: str = "",
                  subnetwork: str = "", labels: dict[str, str] | None = None) -> list[str]:
    """Beam options for a Dataflow run; empty values are left to Dataflow's defaults."""
    missing = [n for n, v in (("project", project), ("region", region), ("temp_location", temp_location)) if not v]
    if missing:
        raise InputError(f"DataflowRunner needs {', '.join(missing)}")
    if not temp_location.startswith("gs://"):
        raise InputError(f"Dataflow's temp_location must be a gs:// path, got {temp_location!r}")
    options = {
        "project": project, "region": region, "temp_location": temp_location,
        "sdk_container_image": sdk_container_image, "service_account_email": service_account,
        "machine_type": machine_type, "max_num_workers": str(max_workers) if max_workers else "",
        "job_name": job_name, "subnetwork": subnetwork,
    }
    args = [f"--{name}={value}" for name, value in options.items() if value]
    return args + [f"--labels={key}={value}" for key, value in sorted((labels or {}).items())]


def runner_for(name: str):
    """DirectRunner means Beam's local FnApiRunner: the switching DirectRunner first tries to download the
    Prism runner binary, which fails offline and ignores the direct_* options."""
    if name == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name


def check_beam_args(pipeline_args: list[str]) -> None:
    """Refuses unknown or malformed Beam options (argparse would exit the process, Beam would drop unknown ones
    with a warning) before anything is touched."""
    parsers = []
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            PipelineOptions(pipeline_args).get_all_options(add_extra_args_fn=parsers.append)
            _, unknown = parsers[0].parse_known_args(pipeline_args)
    except SystemExit as e:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        message = lines[-1].split("error: ", 1)[-1] if lines else f"exit {e.code}"
        raise InputError(f"Beam option after --: {message}") from None
    if unknown:
        raise InputError(f"unknown Beam option(s) after --: {' '.join(unknown)}")


def pipeline_options(runner: str, pipeline_args: list[str], direct_workers: int) -> PipelineOptions:
    """Beam options; direct_workers > 1 runs the local FnApiRunner's stages in that many processes (one
    process with threads per shard is the default: measured faster on 2 cores, see benchmarks/convert.py)."""
    check_beam_args(pipeline_args)
    options = PipelineOptions(pipeline_args)
    if runner == "DirectRunner" and direct_workers > 1:
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = direct_workers
    return options


def describe(pipeline: beam.Pipeline, options: PipelineOptions) -> str:
    """What a dry run prints: the options that differ from Beam's defaults, the pipeline's steps and the size
    of the job graph that would be submitted (Dataflow refuses graphs over ~10 MB)."""

    class Steps(PipelineVisitor):
        def __init__(self):
            self.lines = []

        def enter_composite_transform(self, node):
            depth = node.full_label.count("/")
            if node.full_label and depth < 2:
                self.lines.append("  " * (depth + 1) + node.full_label.rsplit("/", 1)[-1])

    steps = Steps()
    pipeline.visit(steps)
    chosen = options.get_all_options(drop_default=True, retain_unknown_options=True)
    return "\n".join(["pipeline options:", *(f"  --{k}={v}" for k, v in sorted(chosen.items())), "steps:",
                      *steps.lines, f"job graph: {job_graph_bytes(pipeline)} bytes"])


def job_graph_bytes(pipeline: beam.Pipeline) -> int:
    """Size of the serialized pipeline proto, what a runner is sent."""
    return len(pipeline.to_runner_api().SerializeToString())
