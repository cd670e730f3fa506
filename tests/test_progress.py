"""What `catsdogs run` shows and keeps, fed the lines kfp.local writes (its exact formats: colours, indents,
one thread per task) and the summaries steps write into their outputs (components/step_summary.py), without
running a pipeline; tests/test_pipeline_local.py runs the real one."""

import contextlib
import io
import json
import logging
import os
import threading

import pytest

from components import step_summary as summary
from pipelines import kfp_local_log, progress

CYAN, GREEN, RED, RESET = "\033[96m", "\033[92m", "\033[91m", "\033[0m"


def _task(name: str, lines: list[str], executor_output: dict | None, root, status: str = "SUCCESS") -> None:
    """What kfp.local writes for one task: its logging (root logger, colours) and the child's lines, indented."""
    logging.info(f"Executing task {CYAN}'{name}'{RESET}")
    logging.info("Streamed logs:\n")
    for line in lines:
        print("    " + line)
    if executor_output is not None:
        path = root / name / "executor_output.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(executor_output))
        print(f"    2026-01-01 00:00:00,000 INFO root: Wrote executor output file to {path}.")
    colour = GREEN if status == "SUCCESS" else RED
    logging.info(f"Task {CYAN}'{name}'{RESET} finished with status {colour}{status}{RESET}")
    logging.info(f"Task {CYAN}'{name}'{RESET} outputs:\n    Output: 1")
    print("-" * 80)


def test_each_task_gets_its_own_log_and_one_console_line_even_from_parallel_threads(tmp_path):
    console = io.StringIO()
    logs = progress.StepLogs(str(tmp_path / "logs"), progress.Console(console))
    root = tmp_path / "pipeline_root" / "run-1"
    prepare = {"artifacts": {"image_csv": {"artifacts": [
        {"metadata": {"TRAIN": 8.0, "TEST": 2.0, "summary": "10 images found: TRAIN 8, TEST 2"}}]}}}
    train_lines = ["Epoch 1/2", "2/2 - 1s - accuracy: 0.5000 - loss: 0.7000", "Epoch 2/2",
                   "2/2 - 0s - accuracy: 0.9000 - loss: 0.3000 - val_accuracy: 0.8000 - val_loss: 0.4000"]
    trained = {"artifacts": {"model": {"artifacts": [{"metadata": {"summary": "epoch 2/2: loss 0.300"}}]}}}
    with logs.capture():
        logging.info("Running pipeline: 'catsdogs-local'")
        threads = [threading.Thread(target=_task, args=("prepare", [f"prepare line {i}" for i in range(50)],
                                                         prepare, root)),
                   threading.Thread(target=_task, args=("train", train_lines * 10 + train_lines, trained, root))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logging.info("Skipping conditional task condition-1 (condition evaluated to False)")
    shown = console.getvalue().splitlines()
    # A skipped condition (the export when no format is asked for, the deploy gate of a rejected candidate) is not
    # a step: kfp.local names it condition-N, and the summary says what the gate decided. It stays in run.log.
    assert len(shown) == 2, shown
    assert any(line.startswith("  prepare ") and line.endswith("10 images found: TRAIN 8, TEST 2") for line in shown)
    assert any(line.startswith("  train ") and line.endswith("epoch 2/2: loss 0.300") for line in shown)
    assert "condition-1" in (tmp_path / "logs" / "run.log").read_text()

    prepare_log = (tmp_path / "logs" / "prepare.log").read_text()
    train_log = (tmp_path / "logs" / "train.log").read_text()
    assert prepare_log.count("prepare line") == 50 and "Epoch" not in prepare_log
    assert train_log.count("Epoch 1/2") == 11 and "prepare line" not in train_log
    assert "Output: 1" in train_log and "\033[" not in train_log  # kfp's output listing, colours removed
    run_log = (tmp_path / "logs" / progress.RUN_LOG).read_text()
    assert "Running pipeline" in run_log and "Skipping conditional task" in run_log and "Epoch" not in run_log
    assert sorted(logs.steps) == ["prepare", "train"]
    assert logs.steps["prepare"].run_dir == str(root)


def test_a_step_without_output_artifacts_is_shown_by_the_summary_it_printed(tmp_path):
    # deploy returns only its version number, the W&B settings step only a dict: no metadata to write to.
    console = io.StringIO()
    logs = progress.StepLogs(str(tmp_path / "logs"), progress.Console(console))
    with logs.capture():
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            summary.write_summary(None, "published version 3")
        _task("deploy-local", [printed.getvalue().strip()], {"parameterValues": {"Output": 3}}, tmp_path)
    assert console.getvalue().rstrip().endswith("  published version 3"), console.getvalue()


def test_summaries_come_from_the_outputs_not_from_log_wording(tmp_path):
    # A step whose log says nothing the console could read still gets its line: what it wrote into its outputs.
    console = io.StringIO()
    logs = progress.StepLogs(str(tmp_path / "logs"), progress.Console(console))
    outputs = {"artifacts": {"metrics": {"artifacts": [{"metadata": {"accuracy": 0.5}}]},
                             "tfrecords": {"artifacts": [{"metadata": {"summary": "9 of 10 records written"}}]}}}
    with logs.capture():
        _task("convert", ["Epoch 1/1", "1/1 - 1s - loss: 0.5000", "12 rows read"], outputs, tmp_path)
    assert console.getvalue().rstrip().endswith("9 of 10 records written"), console.getvalue()


def test_training_progress_is_read_from_the_epoch_callback(tmp_path):
    keras = pytest.importorskip("keras")
    callback = summary.epoch_callback()
    callback.set_params({"epochs": 3})
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        callback.on_epoch_end(1, {"loss": 0.25, "accuracy": keras.ops.convert_to_numpy(0.75)})
    console = io.StringIO()
    logs = progress.StepLogs(str(tmp_path / "logs"), progress.Console(console))
    with logs.capture():  # a train step that wrote no summary (it failed to, say) is shown by its latest epoch
        _task("train", ["Epoch 9/9", printed.getvalue().strip(), "1/1 - loss: 0.9"], {}, tmp_path)
    assert console.getvalue().rstrip().endswith("  epoch 2/3: loss 0.250, accuracy 0.750"), console.getvalue()


def test_the_kfp_local_adapter_reads_the_task_events():
    started = kfp_local_log.read(kfp_local_log.plain(f"2026 - INFO - Executing task {CYAN}'train'{RESET}"))
    finished = kfp_local_log.read(f"2026 - INFO - Task 'train' finished with status {RED}FAILURE{RESET}")
    assert started == kfp_local_log.Event("started", "train")
    assert finished.kind == "finished" and finished.task == "train"
    assert kfp_local_log.read("    INFO root: Wrote executor output file to /x/executor_output.json.").value == \
        "/x/executor_output.json"
    assert kfp_local_log.read("-" * 80).kind == "end" and kfp_local_log.read("Epoch 1/2") is None


def test_a_failed_task_shows_the_end_of_its_log_and_its_path(tmp_path):
    console = io.StringIO()
    logs = progress.StepLogs(str(tmp_path / "logs"), progress.Console(console))
    lines = [f"detail {i}" for i in range(100)] + ["components.errors.InputError: --image-size must be at least 32"]
    with logs.capture():
        _task("train", lines, None, tmp_path, status="FAILURE")
    shown = console.getvalue()
    assert "FAILED" in shown and "InputError: --image-size must be at least 32" in shown
    assert "detail 99" in shown and "detail 10\n" not in shown  # the end only
    assert str(tmp_path / "logs" / "train.log") in shown
    assert logs.failed().name == "train"


def test_quiet_process_sends_the_processes_own_output_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / progress.RUN_LOG
    with progress.quiet_process(str(log)) as terminal:
        os.write(2, b"I0000 cudart_stub.cc: Could not find cuda drivers\n")  # as TensorFlow's C++ does
        os.write(1, b"stdout of a library\n")
        os.system("echo from a child process")
        terminal.write("one progress line\n")
        terminal.flush()
    out, err = capfd.readouterr()
    assert "one progress line" in out
    assert "cuda" not in out + err and "library" not in out + err and "child" not in out + err
    kept = log.read_text()
    assert "cuda drivers" in kept and "stdout of a library" in kept and "from a child process" in kept
