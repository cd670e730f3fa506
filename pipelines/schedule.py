"""Vertex AI Pipelines schedules (the aiplatform SDK's PipelineJobSchedule) for the training or batch-prediction
pipeline: create one from the same job `catsdogs submit` would send, list them, delete one.

With the accuracy gate (and a champion/challenger check) in the training pipeline, a weekly schedule retrains
on whatever images the bucket holds by then and deploys only a model that passes.
"""

from __future__ import annotations

import re

from components.errors import InputError
from pipelines.submit import credentials_hint

APP_LABEL = ("app", "catsdogs")  # build_job puts it on every job; delete refuses schedules without it
# An optional "CRON_TZ=Zone " or "TZ=Zone " before the five fields (Vertex's cron).
TIME_ZONE = re.compile(r"^(CRON_)?TZ=(\S+) ")


def check_cron(cron: str) -> str:
    """The cron expression, spaces normalised, when it is five valid unix-cron fields (croniter checks each
    field's range and names) after an optional time zone of the tz database; one error line otherwise."""
    import zoneinfo

    from croniter import croniter

    cron = " ".join(cron.split())
    zone = TIME_ZONE.match(cron)
    fields = cron[zone.end():] if zone else cron
    example = "e.g. \"0 3 * * 1\" (Mondays 03:00 UTC), optionally after CRON_TZ=Zone"
    if zone:
        try:
            zoneinfo.ZoneInfo(zone.group(2))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InputError(f"--cron {cron!r}: {zone.group(2)!r} is not a time zone (e.g. Europe/Paris)") from None
    if len(fields.split()) != 5 or not croniter.is_valid(fields):
        raise InputError(f"--cron {cron!r} is not a cron expression: expected five fields, minute hour "
                         f"day-of-month month day-of-week, each in its range; {example}")
    return cron


def schedule_settings(cron: str, max_concurrent_runs: int = 1, service_account: str = "") -> dict:
    """The arguments of PipelineJobSchedule.create, decided once for the request and for the dry run."""
    if max_concurrent_runs < 1:
        raise InputError(f"--max-concurrent-runs must be at least 1, got {max_concurrent_runs}")
    return {"cron": check_cron(cron), "max_concurrent_run_count": max_concurrent_runs,
            "service_account": service_account or None}


def build_schedule(job, display_name: str, credentials=None):
    """A PipelineJobSchedule that starts `job` (an aiplatform.PipelineJob, not submitted) on each cron tick."""
    from google.cloud import aiplatform

    with credentials_hint():
        return aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name, credentials=credentials)


def schedule_request(schedule, settings: dict) -> dict:
    """What create would send (ScheduleService.CreateSchedule), without the long pipeline spec: for --dry-run.

    The settings are put on the resource as PipelineJobSchedule.create puts them before its API call."""
    from google.protobuf import json_format

    # Not yet created, the schedule's public gca_resource raises: its private proto is what create would send.
    built = schedule._gca_resource  # noqa: SLF001
    resource = type(built).deserialize(type(built).serialize(built))  # a copy: the schedule stays as built
    resource.cron = settings["cron"]
    resource.max_concurrent_run_count = settings["max_concurrent_run_count"]
    if settings["service_account"]:
        resource.create_pipeline_job_request.pipeline_job.service_account = settings["service_account"]
    body = json_format.MessageToDict(type(resource).pb(resource))
    job = body["createPipelineJobRequest"]["pipelineJob"]
    job["templateName"] = job.pop("pipelineSpec")["pipelineInfo"]["name"]
    return {"method": "ScheduleService.CreateSchedule", "parent": schedule._parent,  # noqa: SLF001 - as above
            "schedule": body}


def create_schedule(schedule, settings: dict) -> str:
    """Creates the schedule on Vertex and returns its resource name."""
    with credentials_hint():
        schedule.create(**settings)
    return schedule.resource_name


def describe(schedule) -> dict:
    resource = schedule.gca_resource
    return {"name": resource.name, "display_name": resource.display_name, "cron": resource.cron,
            "state": resource.state.name, "next_run_time": str(resource.next_run_time or ""),
            "started_runs": resource.started_run_count}


def list_schedules(project: str, region: str, credentials=None) -> list[dict]:
    from google.cloud import aiplatform

    with credentials_hint():
        return [describe(s) for s in aiplatform.PipelineJobSchedule.list(project=project, location=region,
                                                                         credentials=credentials)]


def schedule_name(name: str, project: str, region: str) -> str:
    """A schedule's full resource name from its ID or its full name."""
    if name.startswith("projects/"):
        return name
    if not re.fullmatch(r"[0-9]+", name):
        raise InputError(f"--delete {name!r}: expected a schedule ID (digits) or "
                         "projects/P/locations/L/schedules/ID (see --list)")
    return f"projects/{project}/locations/{region}/schedules/{name}"


def delete_schedule(name: str, project: str, region: str, credentials=None) -> str:
    """Deletes a schedule that catsdogs created (its job carries the app=catsdogs label); others are refused."""
    from google.cloud import aiplatform

    name = schedule_name(name, project, region)
    with credentials_hint():
        schedule = aiplatform.PipelineJobSchedule.get(name, project=project, location=region,
                                                      credentials=credentials)
        labels = dict(schedule.gca_resource.create_pipeline_job_request.pipeline_job.labels)
        if labels.get(APP_LABEL[0]) != APP_LABEL[1]:
            raise InputError(f"{name} ({schedule.display_name}) was not created by catsdogs "
                             f"(no {'='.join(APP_LABEL)} label on its job): not deleting it")
        schedule.delete()
    return name
