"""What `catsdogs run` prints: one line per pipeline step (what it did, in counts, and how long it took) while
each step's whole output goes to WORKDIR/logs/<step>.log.

kfp.local's SubprocessRunner runs every task as a child process in a thread of this process and print()s the
child's merged stdout/stderr line by line, with its own lines about each task through the root logger.
`StepLogs` stands in for sys.stdout (and the root logger's handler) while the pipeline runs, so it sees every line
in the thread that ran the task and writes it to that task's log. What those lines mean (a task started,
finished, wrote its outputs) only pipelines/kfp_local_log.py knows. What a step did is the one-line summary the
step wrote into its outputs (components/step_summary.py); its training progress the lines its epoch callback prints.

`quiet_process`, which the CLI's main() applies to every command unless --verbose, sends this process's own file
descriptors 1 and 2 to a log (`process_log`): TensorFlow's C++ start-up lines ("failed call to cuInit",
"absl::InitializeLog") are written there before Python can filter them (measured: with TF_CPP_MIN_LOG_LEVEL=3
TensorFlow 2.21 still prints its pre-absl-init lines).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

from components import step_summary
from pipelines import kfp_local_log

RUN_LOG = "run.log"  # this process's own output and kfp.local's pipeline-level lines
FAILURE_TAIL = 20  # log lines shown when a step fails
# Our components' own log lines (components/logs.py's format): the live line shows the latest.
COMPONENT_LOG = re.compile(r"^\s*\S+ \S+ INFO (components\.\S+|pipelines\.\S+): (.*)$")
WANDB_OFFLINE = re.compile(r"wandb: Run data is saved locally in (\S+)")
WANDB_ONLINE = re.compile(r"wandb: .*View run at (https?://\S+)")


def relative(path: str) -> str:
    """A path as short as it can be said: relative to the current folder when it is inside it."""
    if "://" in path:
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


class Console:
    """Where a person reads the run: whole lines, plus on a terminal one status line redrawn in place."""

    def __init__(self, stream=None, verbose: bool = False):
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lock = threading.RLock()
        self.status = ""  # the live line now on screen (terminal only)

    def print(self, text: str = "") -> None:
        with self.lock:
            self._clear()
            self.stream.write(text + "\n")
            self.stream.flush()

    def show(self, text: str) -> None:
        """The live status line: redrawn on a terminal, not printed elsewhere (logs, CI, tests)."""
        if not self.tty or self.verbose:
            return
        with self.lock:
            self._clear()
            self.status = text[:max(20, _columns() - 1)]
            self.stream.write(self.status)
            self.stream.flush()

    def _clear(self) -> None:
        if self.status:
            self.stream.write("\r\033[K")
            self.status = ""

    def step(self, name: str, seconds: float, summary: str, ok: bool = True) -> None:
        self.print(step_line(name, seconds, summary, ok))


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def step_line(name: str, seconds: float | None, summary: str, ok: bool = True) -> str:
    took = "-" if seconds is None else f"{seconds:.1f}s"
    return f"  {name:<15}{took:>7}  {summary if ok else 'FAILED: ' + summary}"


@contextlib.contextmanager
def timed_step(console: Console, name: str, doing: str):
    """A step this process runs itself (e.g. generating the sample): its line, timed. The block sets
    `summary` on the yielded dict."""
    started = time.monotonic()
    console.show(step_line(name, 0.0, doing))
    outcome = {"summary": doing}
    yield outcome
    console.step(name, time.monotonic() - started, outcome["summary"])


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def process_log(command: str, workdir: str | None = None) -> str:
    """Where a command's own process output goes while it is quiet: WORKDIR/logs/run.log for `run`, else
    $XDG_STATE_HOME/catsdogs/COMMAND.log (default ~/.local/state/catsdogs/), replaced by each run."""
    if workdir:
        return os.path.join(os.path.abspath(workdir), "logs", RUN_LOG)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "catsdogs", f"{command}.log")


def _open_log(log_path: str):
    """The log, truncated; os.devnull where it cannot be written (e.g. a container whose HOME is read-only)."""
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        log = open(log_path, "a", buffering=1, encoding="utf-8")  # appending: `run` writes to it through another file
        log.truncate(0)
        return log
    except OSError:
        return open(os.devnull, "w", encoding="utf-8")


@contextlib.contextmanager
def quiet_process(log_path: str):
    """File descriptors 1 and 2 of this process (and of the processes it starts) go to log_path while the block
    runs, so what libraries write there directly (TensorFlow's C++ start-up lines) is kept out of sight.
    sys.stdout and sys.stderr, where they were those descriptors, keep writing to the terminal: what Python code
    prints (our lines, Python warnings, tracebacks) is still seen. Yields sys.stdout."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    swapped = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        fd = _fileno(stream)
        if fd in saved:  # it is about to be redirected: write to a copy of the terminal instead
            swapped[name] = stream
            setattr(sys, name, os.fdopen(os.dup(saved[fd]), "w", buffering=1, encoding=stream.encoding or "utf-8",
                                         errors="backslashreplace"))
    created = _missing_folders(os.path.dirname(os.path.abspath(log_path)))
    showwarning = warnings.showwarning
    with _open_log(log_path) as log:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        # Libraries' Python warnings (Keras: "`shuffle=True` was passed, but will be ignored") are theirs too.
        warnings.showwarning = lambda *a, **k: showwarning(*a[:4], file=log, line=k.get("line"))
        try:
            yield sys.stdout
        finally:
            warnings.showwarning = showwarning
            for name, original in swapped.items():
                ours = getattr(sys, name)
                with contextlib.suppress(Exception):
                    ours.flush()
                    ours.close()
                setattr(sys, name, original)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
    if created and os.path.isfile(log_path) and os.path.getsize(log_path) == 0:
        # Nothing was said (e.g. a bad flag refused at once): leave no folder behind that the command did not need.
        os.remove(log_path)
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty


def _missing_folders(folder: str) -> list[str]:
    """The folders that creating `folder` would create, innermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


@dataclass
class Step:
    """One pipeline task as its log shows it."""
    name: str
    log_path: str
    started: float
    seconds: float = 0.0
    status: str = "RUNNING"  # SUCCESS, FAILURE, SKIPPED
    executor_output: str = ""
    progress: str = ""  # the latest epoch training reported, for the live line
    said: str = ""  # the summary a step without output artifacts printed
    activity: str = ""  # the latest thing the step said it did
    shown: str = ""  # the activity on the live line
    wandb_runs: list[str] = field(default_factory=list)  # offline run folders or online run URLs
    summary: str = ""
    closing: bool = False  # finished; kfp is listing its outputs

    def outputs(self) -> dict:
        """The step's KFP ExecutorOutput: {"parameterValues": {...}, "artifacts": {name: {"artifacts": [...]}}}."""
        try:
            with open(self.executor_output, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def artifact(self, name: str) -> dict:
        found = self.outputs().get("artifacts", {}).get(name, {}).get("artifacts", [])
        return found[0] if found else {}

    @property
    def run_dir(self) -> str:
        """pipeline_root/<pipeline run>: the folder above this task's outputs."""
        return os.path.dirname(os.path.dirname(self.executor_output)) if self.executor_output else ""

    def tail(self, lines: int = FAILURE_TAIL) -> list[str]:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                kept = [line.rstrip("\n") for line in f if line.strip() and not set(line.strip()) <= {"-"}]
        except OSError:
            return []
        return kept[-lines:]


def summarize(step: Step) -> str:
    """What the step did: the summary it wrote into its outputs (or printed), else its last word."""
    return step_summary.from_outputs(step.outputs()) or step.said or step.progress or step.activity or "done"


def live_activity(step: Step) -> str:
    return step.progress or step.activity or "running"


class StepLogs(io.TextIOBase):
    """Stands in for sys.stdout while kfp.local runs the pipeline: each line goes to the log of the task whose
    thread wrote it (lines outside a task to RUN_LOG), and the console gets a line per finished task."""

    def __init__(self, logs_dir: str, console: Console):
        self.logs_dir = logs_dir
        self.console = console
        self.steps: dict[str, Step] = {}
        self.files: dict[str, io.TextIOBase] = {}
        self.local = threading.local()  # .step: the task this thread is running; .partial: an unfinished line
        self.lock = threading.RLock()
        self.ticker: threading.Thread | None = None
        self.done = threading.Event()
        os.makedirs(logs_dir, exist_ok=True)

    # io.TextIOBase
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        partial = getattr(self.local, "partial", "") + text
        *lines, self.local.partial = partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        with self.lock:
            for f in self.files.values():
                f.flush()

    def isatty(self) -> bool:
        return False

    def _file(self, name: str, path: str):
        if name not in self.files:
            self.files[name] = open(path, "a" if name == RUN_LOG else "w", encoding="utf-8", buffering=1)
        return self.files[name]

    def _line(self, raw: str) -> None:
        line = kfp_local_log.plain(raw)
        event = kfp_local_log.read(line)
        step: Step | None = getattr(self.local, "step", None)
        if event and event.kind == "started":
            step = self._start(event.task)
        with self.lock:
            if step is None:
                self._file(RUN_LOG, os.path.join(self.logs_dir, RUN_LOG)).write(line + "\n")
            else:
                self._file(step.name, step.log_path).write(line + "\n")
        if self.console.verbose:
            self.console.print(raw)
        if step is not None:
            self._read(step, line, event)

    def _start(self, name: str) -> Step:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        step = Step(name, os.path.join(self.logs_dir, f"{safe}.log"), time.monotonic())
        with self.lock:
            self.steps[name] = step
        self.local.step = step
        self._tick_start()
        return step

    def _read(self, step: Step, line: str, event: kfp_local_log.Event | None) -> None:
        """Updates the step from one of its lines: its progress, its outputs' file, its end."""
        if event and event.kind == "finished" and event.task == step.name:
            step.seconds = time.monotonic() - step.started
            step.status = event.value
            ok = step.status == "SUCCESS"
            step.summary = summarize(step) if ok else f"see {relative(step.log_path)}"
            self.console.step(step.name, step.seconds, step.summary, ok)
            if not ok:
                for text in step.tail():
                    self.console.print("    | " + text)
                self.console.print(f"    the whole log: {step.log_path}")
            step.closing = True  # kfp lists the outputs next, then draws a line: both still belong to the step
            return
        if step.closing:
            if event and event.kind == "end":
                self.local.step = None
            return
        if event and event.kind == "outputs":
            step.executor_output = event.value
        elif (said := step_summary.parse(line)) is not None:
            if "summary" in said:
                step.said = str(said["summary"])
            elif "epoch" in said:
                step.progress = step_summary.epoch_line(said["epoch"], said.get("epochs", said["epoch"]),
                                                        said.get("metrics", {}), names=("loss", "accuracy"))
        elif match := COMPONENT_LOG.search(line):
            step.activity = match.group(2)
        elif match := WANDB_OFFLINE.search(line) or WANDB_ONLINE.search(line):
            if match.group(1) not in step.wandb_runs:
                step.wandb_runs.append(match.group(1))
        activity = live_activity(step)
        if activity != step.shown:  # the ticker redraws the elapsed time
            step.shown = activity
            self.console.show(step_line(step.name, time.monotonic() - step.started, activity))

    def _tick_start(self) -> None:
        """On a terminal, redraws the running step's line every half second (its elapsed time)."""
        if not self.console.tty or self.ticker is not None:
            return

        def tick():
            while not self.done.wait(0.5):
                running = [s for s in list(self.steps.values()) if s.status == "RUNNING"]
                if running:
                    s = running[-1]
                    self.console.show(step_line(s.name, time.monotonic() - s.started, live_activity(s)))

        self.ticker = threading.Thread(target=tick, daemon=True)
        self.ticker.start()

    @contextlib.contextmanager
    def capture(self):
        """sys.stdout, sys.stderr and the root logger's output go through these logs while the block runs."""
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        handler = logging.StreamHandler(self)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(self), contextlib.redirect_stderr(self):
                yield self
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            self.done.set()
            if self.ticker is not None:
                self.ticker.join()
            with self.lock:
                for f in self.files.values():
                    f.close()
                self.files.clear()
            self.console.show("")

    def failed(self) -> Step | None:
        return next((s for s in self.steps.values() if s.status == "FAILURE"), None)

    def wandb_runs(self) -> list[str]:
        return [run for step in self.steps.values() for run in step.wandb_runs]


def clear_logs(logs_dir: str, keep: tuple[str, ...] = ()) -> None:
    """Removes the previous run's step logs (only the *.log files directly in logs_dir: the run writes those)."""
    if not os.path.isdir(logs_dir):
        return
    for name in os.listdir(logs_dir):
        path = os.path.join(logs_dir, name)
        if name.endswith(".log") and name not in keep and os.path.isfile(path):
            os.remove(path)
