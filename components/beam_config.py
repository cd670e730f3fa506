"""Dataflow's settings for the Beam stages (convert, batch-predict), written once: their CLI flags and both
Vertex pipelines' Dataflow parameters come from here; beam_runner.dataflow_args turns them into Beam options,
in a module of their own so that reading them imports no Beam."""

from __future__ import annotations

from dataclasses import dataclass

from components.options import option

RUNNERS = ("DirectRunner", "DataflowRunner")


@dataclass(frozen=True)
class DataflowConfig:
    """Empty or 0: Dataflow's own default (the CLI's defaults)."""

    project: str = option("", None)
    region: str = option("", None)
    temp_location: str = option("", "gs:// folder for Dataflow's staging")
    sdk_container_image: str = option("", "worker image (the catsdogs components image)")
    service_account: str = option("", "worker service account email")
    machine_type: str = option("", "worker machine type, e.g. n1-standard-4")
    max_workers: int = option(0, "autoscaling limit")
    job_name: str = option("", None)
    subnetwork: str = option("", "workers' subnetwork (regions/R/subnetworks/S or a URL)")


# What the Vertex pipelines (training's convert step, batch prediction) ask of Dataflow unless told otherwise.
PIPELINE_DATAFLOW = DataflowConfig(machine_type="n1-standard-4", max_workers=10)
