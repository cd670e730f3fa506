"""A pipeline step's own one-line account of what it did ("80 images found: TRAIN 58, VALIDATION 13, TEST 9"),
written into its outputs: the `summary` key of one output artifact's metadata, which kfp.local keeps in the step's
executor output file and Vertex shows beside the artifact. `catsdogs run` prints it (pipelines/progress.py).

A step whose outputs are only parameters (deploy's version number, the W&B settings) has no metadata to write to:
it prints the line marked with MARK instead, and so does the training callback its per-epoch progress.
"""

import json

KEY = "summary"  # the artifact metadata key
MARK = "catsdogs-step: "  # a structured line a step prints: MARK + JSON ({"summary": ...} or {"epoch": ...})


def write_summary(artifact, line: str) -> str:
    """Records the step's summary in `artifact`'s metadata (a KFP output artifact); with None, prints it marked."""
    if artifact is None:
        report(summary=line)
    else:
        artifact.metadata[KEY] = line
    return line


def report(**fields) -> None:
    """Prints one structured progress line (MARK + JSON), for the console to read."""
    print(MARK + json.dumps(fields), flush=True)


def parse(line: str) -> dict | None:
    """The fields of a line `report` printed (anywhere in the line: kfp.local indents a step's output), else None."""
    at = line.find(MARK)
    if at < 0:
        return None
    try:
        fields = json.loads(line[at + len(MARK):])
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def from_outputs(executor_output: dict) -> str:
    """The summary a step wrote into its outputs (KFP's ExecutorOutput JSON), "" when none did."""
    for output in executor_output.get("artifacts", {}).values():
        for artifact in output.get("artifacts", []):
            line = artifact.get("metadata", {}).get(KEY)
            if line:
                return str(line)
    return ""


def epoch_line(epoch: int, epochs: int, metrics: dict, names=("loss", "accuracy", "val_loss", "val_accuracy")) -> str:
    """"epoch 2/2: loss 0.300, accuracy 0.900, ...": training's progress and its summary."""
    shown = ", ".join(f"{name} {metrics[name]:.3f}" for name in names if name in metrics)
    return f"epoch {epoch}/{epochs}" + (f": {shown}" if shown else "")


def epoch_callback():
    """A Keras callback that reports each finished epoch (its number, the total and its metrics) as one line."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            report(epoch=epoch + 1, epochs=self.params.get("epochs") or epoch + 1,
                   metrics={k: float(v) for k, v in (logs or {}).items() if _is_number(v)})

    return EpochProgress()


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
