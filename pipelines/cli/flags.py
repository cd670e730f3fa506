"""Flag groups that several commands share, the project's parser class and the parsing of shared flag values."""

from __future__ import annotations

import argparse
import dataclasses

from components.beam_config import DataflowConfig
from components.errors import InputError


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line `catsdogs <cmd>: error: ...`, exit 2 (argparse's own
    prints the whole usage above it). Subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        # No prefixes of long flags: `--model` silently meaning `--model-dir` is how a renamed flag loses data.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def classes(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(","))


def key_values(pairs: list[str], flag: str) -> dict[str, str]:
    """KEY=VALUE flags as a dict; one error line naming the flag for a pair without '='."""
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise InputError(f"{flag} {pair!r}: expected KEY=VALUE")
    return dict(pair.split("=", 1) for pair in pairs)


def add_vertex_build_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", choices=("training", "batch-predict", "monitor"), default="training",
                        help="training: images to a deployed model; batch-predict: score images with a model "
                             "(default %(default)s)")
    parser.add_argument("--images-registry", default="",
                        help="e.g. us-central1-docker.pkg.dev/PROJECT/catsdogs (default: local image names)")
    parser.add_argument("--images-tag", default="latest", help="(default %(default)s)")
    parser.add_argument("--machine", default="T4_1X",
                        help="training machine preset: CPU, T4_1X, T4_4X, V100_4X, A100_8X, L4_1X ... "
                             "(default %(default)s)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="training machines; more than 1 trains multi-node (default %(default)s)")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """Every training parameter as a flag, with TrainConfig's defaults; architectures listed from the registry."""
    from components.train.config import HELP, parameters
    from components.train.models import ARCHITECTURES

    group = parser.add_argument_group("training")
    for name, default in parameters().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):  # on by default: --no-<name> turns it off
            group.add_argument(flag, action=argparse.BooleanOptionalAction if default else "store_true",
                               default=default, help=HELP[name])
        elif name == "architecture":
            group.add_argument(flag, default=default, metavar="NAME",
                               help=f"{HELP[name]}: {', '.join(ARCHITECTURES)} (default %(default)s)")
        else:
            group.add_argument(flag, type=type(default), default=default, help=f"{HELP[name]} (default %(default)s)")


def training_config(args):
    """The TrainConfig of the parsed training flags, checked (one error line for a bad value)."""
    from components.train.config import TrainConfig, parameters

    config = TrainConfig(**{name: getattr(args, name) for name in parameters()})
    config.check()
    return config


def training_arguments(config) -> dict[str, object]:
    """The pipeline arguments of a TrainConfig (its training parameters, by name)."""
    from components.train.config import parameters

    return {name: getattr(config, name) for name in parameters()}


def add_serving_limits(parser: argparse.ArgumentParser) -> None:
    """The serving check's limits (components/serve_check): `catsdogs check-serving` and `catsdogs run`."""
    parser.add_argument("--max-p99-ms", type=float, default=0.0,
                        help="serving check: refuse above this p99 latency at concurrency 1 (0: no limit)")
    parser.add_argument("--min-throughput", type=float, default=0.0,
                        help="serving check: refuse below this many images/s at concurrency 8 (0: no limit)")
    parser.add_argument("--max-memory-mb", type=float, default=0.0,
                        help="serving check: refuse above this peak server memory (0: no limit)")


def add_max_file_bytes(parser: argparse.ArgumentParser) -> None:
    from components.contracts import MAX_FILE_BYTES

    parser.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES, metavar="BYTES",
                        help="a larger input file is an error row, not read (default %(default)s: 64 MiB)")


def add_dataflow_flags(parser: argparse.ArgumentParser) -> None:
    dataflow = parser.add_argument_group("Dataflow (with --runner DataflowRunner)")
    add_config_flags(dataflow, DataflowConfig)
    dataflow.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="job label (repeatable)")


def dataflow_beam_args(args) -> list[str]:
    """Dataflow's Beam options from the flags of add_dataflow_flags (the same ones convert takes)."""
    from components.beam_runner import dataflow_args

    return dataflow_args(
        args.project, args.region, args.temp_location, sdk_container_image=args.sdk_container_image,
        service_account=args.service_account, machine_type=args.machine_type, max_workers=args.max_workers,
        job_name=args.job_name, subnetwork=args.subnetwork, labels=key_values(args.label, "--label"),
    )


def add_validation_flags(parser, every_limit: bool = True) -> None:
    """The validate step's gate; `catsdogs run` takes the ones the pipelines take (every_limit False)."""
    from components.validate.config import ValidateConfig

    add_config_flags(parser, ValidateConfig, "fix", "max_leakage", "near_duplicate_distance")
    if every_limit:
        add_config_flags(parser, ValidateConfig, "max_conflicting", "max_imbalance")


def add_config_flags(parser, config_class, *names: str) -> None:
    """A flag per field of a stage config (components/options.py): --NAME-WITH-DASHES, the config's default and
    help; `names` picks fields, in that order (default: all). A field's metadata may rename its flag (`flag`)."""
    chosen = {f.name: f for f in dataclasses.fields(config_class)}
    for name in names or tuple(chosen):
        field = chosen[name]
        keywords = dict(field.metadata["flag"])
        flag = keywords.pop("flag", "--" + name.replace("_", "-"))
        if isinstance(field.default, bool):
            keywords.setdefault("action", "store_true")
        elif field.default is not None and "choices" not in keywords:
            keywords.setdefault("type", type(field.default))
        parser.add_argument(flag, dest=name, default=field.default, help=field.metadata["help"], **keywords)


def add_region(parser) -> None:
    """--region, required: the one spelling of a Google Cloud region on every command. deploy, promote and rollback
    spelled it --location in earlier READMEs; that still works, unlisted. argparse cannot require one of two
    spellings, so required_region checks it."""
    parser.add_argument("--region", default=None, help="e.g. us-central1 (required)")
    parser.add_argument("--location", dest="region", default=None, help=argparse.SUPPRESS)


def required_region(args) -> str:
    if not args.region:
        raise InputError("the following arguments are required: --region")
    return args.region


def add_explain_flags(parser: argparse.ArgumentParser) -> None:
    """The evaluate step's model card and saliency settings, on `run` (pipeline arguments), `compile` and `submit`
    (the compiled training pipeline's defaults: set_explain_defaults)."""
    from components.evaluate.saliency import SALIENCY_IMAGES

    group = parser.add_argument_group("explanations (the evaluate step's report and model card)")
    group.add_argument("--intended-use", default="", metavar="TEXT",
                       help="the model card's intended use (default: a demonstration classifier's)")
    group.add_argument("--saliency-images", type=int, default=SALIENCY_IMAGES, metavar="N",
                       help="report images with a saliency overlay (integrated gradients; 0: none) "
                            "(default %(default)s)")


def explain_arguments(args) -> dict:
    """The pipeline arguments of add_explain_flags' flags, checked."""
    if args.saliency_images < 0:
        raise InputError(f"--saliency-images must be 0 or more, got {args.saliency_images}")
    return {"intended_use": args.intended_use, "saliency_images": args.saliency_images}


def explain_params(args) -> list[str]:
    """`submit`: add_explain_flags' values that differ from their defaults, as --param KEY=VALUE pairs (a --param
    given too comes later and wins)."""
    from components.evaluate.saliency import SALIENCY_IMAGES

    if args.pipeline != "training" or not hasattr(args, "intended_use"):
        return []
    defaults = {"intended_use": "", "saliency_images": SALIENCY_IMAGES}
    return [f"{name}={value}" for name, value in explain_arguments(args).items() if value != defaults[name]]


def set_explain_defaults(args, template_path: str) -> None:
    """Writes add_explain_flags' values as the compiled training pipeline's parameter defaults."""
    import yaml

    if args.pipeline != "training" or not hasattr(args, "intended_use"):
        return
    with open(template_path) as f:
        spec = yaml.safe_load(f)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    values = explain_arguments(args)
    if all(declared[name].get("defaultValue") == value for name, value in values.items()):
        return  # KFP's own file, untouched
    for name, value in values.items():
        declared[name]["defaultValue"] = value
    with open(template_path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
