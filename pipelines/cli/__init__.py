"""The `catsdogs` command: each stage on its own, the whole local pipeline (`run`), and the Vertex compile.

One module per command group keeps each command's flags beside its handler (data, model, serving, run, cloud);
flags.py holds the flag groups several commands share. This module parses, sends the process's output to its log
unless --verbose, and turns errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from components import logs, storage
from components.errors import InputError
from pipelines.cli import cloud, data, model, monitor, run, serving
from pipelines.cli.flags import Parser

# Names the tests import from here.
from pipelines.cli.run import _wandb_summary, demo_images  # noqa: F401
from pipelines.cli.serving import _shortened  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="catsdogs",
        description="Labelled images -> CSV -> TFRecords -> Keras classifier -> served model, locally or on Vertex AI.",
        epilog=QUIET_HELP,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything libraries print (TensorFlow's C++ lines included) and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, model, serving, run, cloud, monitor):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    beam_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, beam_args = argv[:split], argv[split + 1:]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named with the command, like every other error
        parser.exit(2, f"catsdogs {args.command}: error: unrecognized arguments: {' '.join(unknown)} "
                       f"(see catsdogs {args.command} --help)\n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the progress output
    if args.verbose:
        return _handle(args, beam_args, log_path=None)
    from pipelines import progress

    log_path = process_log(args)
    with progress.quiet_process(log_path):
        code = _handle(args, beam_args, log_path)
    logs.setup(logging.INFO)  # its handler wrote to the terminal's copy, closed now
    return code


def process_log(args) -> str:
    """Where a command's process output goes unless --verbose (said in `catsdogs --help`)."""
    from pipelines import progress

    workdir = getattr(args, "workdir", None) if args.command == "run" else None
    return progress.process_log(args.command, None if storage.is_gcs(workdir or "") else workdir)


QUIET_HELP = ("TensorFlow's C++ start-up lines and whatever else libraries write straight to the terminal go to "
              "WORKDIR/logs/run.log for `run`, else to $XDG_STATE_HOME/catsdogs/COMMAND.log (default "
              "~/.local/state/catsdogs/), replaced by each run; -v/--verbose shows them here instead. Errors are "
              "shown either way.")


def _handle(args, beam_args: list[str], log_path: str | None) -> int:
    """Runs the command's handler: bad input is one error line and exit 2, a TensorFlow error one line and exit 1."""
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if getattr(args, "takes_beam_args", False):
            code = args.handler(args, beam_args)
        else:
            if beam_args:
                raise InputError(f"arguments after -- are only for `catsdogs convert` and `catsdogs batch-predict`: "
                                 f"{' '.join(beam_args)}")
            code = args.handler(args)
    except InputError as e:
        print(f"catsdogs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not e.filename:
            raise
        # A path the user gave that is missing, of the wrong kind (a file for a folder) or not readable.
        print(f"catsdogs {args.command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if _missing_credentials(e):  # any command that reaches Google Cloud without them
            from pipelines.submit import NO_CREDENTIALS

            print(f"catsdogs {args.command}: error: {NO_CREDENTIALS}", file=sys.stderr)
            return 2
        if not _is_tensorflow_error(e):
            raise
        # An op that failed or ran out of memory: TensorFlow's message, first line; its C++ lines are in the log.
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(e, "message", "") or str(e)).strip()
        print(f"catsdogs {args.command}: error: TensorFlow {type(e).__name__}: {message.splitlines()[0]}"
              + (f" (details in {log_path})" if log_path else ""), file=sys.stderr)
        return 1
    return code or 0


def _missing_credentials(error: BaseException | None) -> bool:
    """google-auth found no credentials, here or as the cause of a library's own error (Beam's, aiplatform's)."""
    exceptions = sys.modules.get("google.auth.exceptions")
    seen = 0
    while exceptions is not None and error is not None and seen < 10:
        if isinstance(error, exceptions.DefaultCredentialsError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _is_tensorflow_error(error: Exception) -> bool:
    """TensorFlow's OpError family (an op failing, ResourceExhaustedError for out of memory), without importing it."""
    errors = sys.modules.get("tensorflow.python.framework.errors_impl")
    return errors is not None and isinstance(error, errors.OpError)
