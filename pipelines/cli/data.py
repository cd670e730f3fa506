"""Data commands: sample-data, prepare, validate, convert, inspect (each one's flags beside its handler)."""

from __future__ import annotations

from components.beam_config import RUNNERS
from components.convert.config import ConvertConfig
from components.errors import InputError
from components.prepare.config import PrepareConfig
from components.validate.config import ValidateConfig
from pipelines.cli.flags import (
    add_config_flags,
    add_dataflow_flags,
    add_max_file_bytes,
    add_validation_flags,
    classes,
    dataflow_beam_args,
)


def register(sub) -> None:
    add_sample_data(sub)
    add_prepare(sub)
    add_validate(sub)
    add_convert(sub)
    add_inspect(sub)


def cmd_sample_data(args) -> None:
    from components.sample_data import generate_sample

    paths = generate_sample(args.out_dir, args.per_class, args.classes, args.layout, args.seed)
    print(f"wrote {len(paths)} images for {len(args.classes)} classes to {args.out_dir}")


def add_sample_data(sub) -> None:
    p = sub.add_parser("sample-data", help="generate a labelled JPEG image set to try things with")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--per-class", type=int, default=200, help="images per class (default %(default)s)")
    p.add_argument("--layout", choices=("flat", "split"), default="flat",
                   help="flat: OUT_DIR/<label>/*.jpg; split: OUT_DIR/train|validation/<label>/*.jpg")
    p.add_argument("--classes", type=classes, default=("cats", "dogs"), help="comma-separated (default cats,dogs)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same files (default %(default)s)")
    p.set_defaults(handler=cmd_sample_data)


def cmd_prepare(args) -> None:
    from components.prepare import prepare_csv

    # it logs the counts (once: the quiet console shows them)
    prepare_csv(args.images_root, args.output, args.train_fraction, args.validation_fraction, args.split_by)


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="scan <label>/<file> or <split>/<label>/<file> into a split,image_uri,label CSV")
    p.add_argument("images_root", metavar="IMAGES_ROOT", help="local folder or gs://bucket/prefix")
    p.add_argument("--output", required=True, metavar="CSV", help="where to write the CSV (local or gs://)")
    add_config_flags(p, PrepareConfig)
    p.set_defaults(handler=cmd_prepare)


def cmd_validate(args) -> None:
    from components.validate.core import check_gate, summary_line, validate

    if args.records_out and not args.facts:
        raise InputError("--records-out needs --facts DIR (the converted records to hand on)")
    report = validate(args.csv, args.output_dir, fix=args.fix, max_leakage=args.max_leakage,
                      max_conflicting=args.max_conflicting, near_duplicate_distance=args.near_duplicate_distance,
                      max_imbalance=args.max_imbalance, image_size=args.min_image_size, facts_dir=args.facts)
    print(f"validated {args.csv}: {summary_line(report)}; report in {args.output_dir}")
    check_gate(report, args.output_dir)
    if args.records_out:
        from components.validate.records import read_dropped, without_dropped

        dropped = without_dropped(args.facts, args.records_out, read_dropped(args.output_dir) if args.fix else {})
        print(f"records to train on in {args.records_out}: those of {args.facts}, {dropped} left out by --fix")


def add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check the CSV's images for copies across splits, conflicting labels, "
                                        "near-duplicates, balance and sizes; fail on leakage",
                       description="Reads every image of the CSV once (with --facts none: conversion's facts) and "
                                   "writes validation.json and pairs.csv to --output-dir. Exits 2 with one line when "
                                   "copies cross splits or labels conflict (more than the limits); --fix writes "
                                   "cleaned.csv instead, and with --records-out the records less the dropped rows.")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--output-dir", required=True, help="folder for validation.json, pairs.csv (and cleaned.csv)")
    p.add_argument("--facts", metavar="DIR", help="a `catsdogs convert` output folder of this CSV: use the image "
                                                  "facts convert wrote there (facts-*.csv) and read no image")
    p.add_argument("--records-out", metavar="DIR",
                   help="with --facts, once the gate passes: the records to train on, linked or copied from the "
                        "--facts folder without reading them, less the rows --fix set to DISCARD")
    add_validation_flags(p)
    add_config_flags(p, ValidateConfig, "min_image_size")
    p.set_defaults(handler=cmd_validate)


def cmd_convert(args, beam_args: list[str]) -> None:
    from components.convert.pipeline import convert

    if args.runner == "DataflowRunner":
        beam_args = dataflow_beam_args(args) + beam_args
    summary = convert(args.csv, args.output_dir, args.record_format, args.compression, args.num_shards,
                      args.max_error_fraction, args.runner, beam_args, args.workers, args.dry_run,
                      args.max_file_bytes, facts=args.facts)
    if args.dry_run:
        return
    print(f"{summary.good} of {summary.rows} rows written to {args.output_dir} as {summary.format} records "
          f"({', '.join(f'{k} {v}' for k, v in summary.per_split.items())}); {summary.bad} bad, "
          f"{summary.duplicates} duplicates, {summary.discarded} discarded; labels {summary.labels}")


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert the CSV's images to TFRecords with Apache Beam",
                       description="Reads the CSV (split,image_uri,label), checks every image and writes "
                                   "<split>-SSSSS-of-NNNNN.tfrecord[.gz], labels.json, summary.json and "
                                   "errors-*.csv (bad rows with the reason). Arguments after -- go to Beam.")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--output-dir", required=True, help="folder for the shards, labels.json, summary.json, errors")
    add_config_flags(p, ConvertConfig, "record_format", "compression", "num_shards", "max_error_fraction")
    add_max_file_bytes(p)
    p.add_argument("--runner", choices=RUNNERS, default="DirectRunner", help="(default %(default)s)")
    add_config_flags(p, ConvertConfig, "workers")
    p.add_argument("--dry-run", action="store_true",
                   help="print the pipeline options, steps and job graph size; run nothing")
    # Off by default: hashing each image for validation made jpeg conversion 2.8x slower per thread (measured).
    p.add_argument("--facts", action="store_true",
                   help="also write facts-*.csv: each image's content hash, perceptual hash, size and format, "
                        "for `catsdogs validate --facts` (no image read twice; ~1.6 ms CPU an image)")
    add_dataflow_flags(p)
    p.set_defaults(handler=cmd_convert, takes_beam_args=True)


def cmd_inspect(args) -> None:
    from components.convert.inspect import inspect_records

    print(inspect_records(args.data_dir, args.split, args.num_records, args.output_dir))


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show what a folder of TFRecords holds, and write a few images")
    p.add_argument("data_dir", metavar="DIR", help="output folder of `catsdogs convert`")
    p.add_argument("--split", default="train", help="train, validation or test (default %(default)s)")
    p.add_argument("--num-records", type=int, default=3, help="records to show (default %(default)s)")
    p.add_argument("--output-dir", default=None, metavar="PNG_DIR", help="write those records' images here")
    p.set_defaults(handler=cmd_inspect)
