"""The one place that knows how kfp.local 2.17's SubprocessRunner words its log: "Executing task 'NAME'" before a
task, "Task 'NAME' finished with status S" after it, then the task's outputs and a line of dashes, all through the
root logger or print() in the thread that runs the task, with ANSI colours; the KFP executor inside the task logs
where it wrote the task's outputs (the ExecutorOutput JSON). `read` turns one such line into an event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r" - INFO - Executing task '([^']+)'")
_FINISHED = re.compile(r" - \w+ - Task '([^']+)' finished with status (\w+)")
_OUTPUTS = re.compile(r"Wrote executor output file to (.+?)\.?$")


@dataclass(frozen=True)
class Event:
    kind: str  # "started", "finished", "outputs" (the executor output file), "end" (the task's last line)
    task: str = ""
    value: str = ""  # finished: SUCCESS, FAILURE, SKIPPED; outputs: the file's path


def plain(line: str) -> str:
    """The line without its colours."""
    return ANSI.sub("", line)


def read(line: str) -> Event | None:
    """What a line of kfp.local's output says about a task, if anything."""
    line = plain(line)
    if match := _STARTED.search(line):
        return Event("started", match.group(1))
    if match := _FINISHED.search(line):
        return Event("finished", match.group(1), match.group(2))
    if match := _OUTPUTS.search(line):
        return Event("outputs", value=match.group(1))
    if line.startswith("-----") and not line.strip("-"):
        return Event("end")
    return None
