"""validation.html, the page a person looks at: the pairs across splits and the conflicting pairs as side-by-side
thumbnails, the balance chart, the size histogram and the statistics table.

Built from the validation's own files (validation.json and pairs.csv): only the images of the pairs shown are read
again (at most MAX_PAIRS_SHOWN pairs), so the page costs the same at a million images as at a thousand.
`section(folder)` is the same content as an HTML fragment, for the evaluation report. One file with everything
inline (thumbnails as data: URIs, charts as matplotlib SVG) and no script, as the evaluation report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging

from components import charts, storage
from components.contracts import SPLITS
from components.validate.core import PAIRS_FILE, REPORT_FILE

log = logging.getLogger(__name__)

MAX_PAIRS_SHOWN = 24  # pairs read again and drawn; pairs.csv lists them all
THUMBNAIL = 150  # pixels, the longer side
SPLIT_COLOURS = {"TRAIN": "#1f77b4", "VALIDATION": "#ff7f0e", "TEST": "#2ca02c"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 1150px; }
h2 { margin-top: 1.4em; border-bottom: 1px solid #ddd; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.charts svg { height: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 9px; }
td { text-align: right; } caption { text-align: left; padding-bottom: 4px; }
"""
# Inside the section: the evaluation report embeds it with its own page style.
SECTION_STYLE = """
#validation .pairs { display: flex; flex-wrap: wrap; gap: 10px; }
#validation .pair { margin: 0; border: 1px solid #ccc; border-radius: 4px; padding: 4px; font-size: 12px;
  width: 320px; }
#validation .pair.conflicting { border-color: #c62828; }
#validation .pair .sides { display: flex; gap: 4px; }
#validation .pair .side { width: 155px; text-align: center; overflow-wrap: anywhere; }
#validation .pair img { width: 150px; height: 150px; object-fit: contain; background: #f3f3f3; }
#validation .fail { color: #c62828; } #validation .pass { color: #2e7d32; }
"""


def _balance_chart(counts: dict[str, dict[str, int]]) -> str:
    """Images per label, one bar per split."""
    labels = sorted({label for per_label in counts.values() for label in per_label})
    splits = [s for s in SPLITS if s in counts]
    if not labels or not splits:
        return ""
    figure = charts.figure(max(4.0, 0.9 * len(labels) * len(splits) / 2 + 2), 3.2)
    axes = figure.subplots()
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        values = [counts[split].get(label, 0) for label in labels]
        bars = axes.bar([i + (k - (len(splits) - 1) / 2) * width for i in range(len(labels))], values, width,
                        label=split, color=SPLIT_COLOURS.get(split, "#888"))
        axes.bar_label(bars, fontsize=8, padding=1)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel("images")
    axes.set_title("Balance: images per label and split")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return charts.svg(figure, "balance")


def _size_chart(stats: dict) -> str:
    """Width and height histograms over the same bins, with the training size marked."""
    bins = list(dict.fromkeys([*stats.get("width", {}), *stats.get("height", {})]))
    bins.sort(key=lambda b: float(b.split("-")[0].rstrip("+")))
    if not bins:
        return ""
    figure = charts.figure(max(4.0, 0.55 * len(bins) + 1.5), 3.2)
    axes = figure.subplots()
    for offset, side, colour in ((-0.2, "width", "#1f77b4"), (0.2, "height", "#ff7f0e")):
        values = [stats[side].get(b, 0) for b in bins]
        axes.bar([i + offset for i in range(len(bins))], values, 0.4, label=side, color=colour)
    axes.set_xticks(range(len(bins)), bins, rotation=30, fontsize=8)
    axes.set_xlabel("pixels")
    axes.set_ylabel("images")
    axes.set_title(f"Image sizes ({stats.get('smaller_than_training_size', 0)} smaller than the training size "
                   f"{stats.get('training_size', '?')})", fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return charts.svg(figure, "sizes")


def _thumbnail(uri: str) -> str:
    """A data: URI of the image made small, or '' when it cannot be read now (the pair is still listed)."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(storage.read_bytes(uri)))
        image.draft("RGB", (THUMBNAIL, THUMBNAIL))
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
    except (OSError, ValueError) as e:
        log.warning("validation report: no thumbnail of %s: %s", uri, e)
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def shown_pairs(pairs_csv: str, limit: int = MAX_PAIRS_SHOWN) -> tuple[list[dict], int]:
    """The first `limit` pairs across splits or with different labels (pairs.csv streamed), and how many there
    are in all."""
    from apache_beam.io.filesystems import FileSystems

    shown, total = [], 0
    if not FileSystems.exists(pairs_csv):
        return shown, total
    with FileSystems.open(pairs_csv) as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")):
            if row["scope"] == "across" or row["label_a"] != row["label_b"]:
                total += 1
                if len(shown) < limit:
                    shown.append(row)
    return shown, total


def _side(row: dict, side: str) -> str:
    uri, split, label = row[f"image_{side}"], row[f"split_{side}"], row[f"label_{side}"]
    source = _thumbnail(uri)
    name = html.escape(uri.rsplit("/", 1)[-1])
    picture = (f'<img src="{source}" alt="{html.escape(uri)}" title="{html.escape(uri)}">' if source
               else "<p>(not readable now)</p>")
    return (f'<div class="side">{picture}<br><b style="color:{SPLIT_COLOURS.get(split, "#888")}">{split}</b> '
            f"{html.escape(label)}<br>{name}</div>")


def _pairs_gallery(rows: list[dict], total: int) -> str:
    if not total:
        return "<p>No pair of (near-)identical images across splits or with different labels.</p>"
    figures = []
    for row in rows:
        conflicting = row["label_a"] != row["label_b"]
        what = f"{row['kind']} copy" + (f", {row['distance']} bits apart" if row["kind"] == "near" else "")
        what += ", labels differ" if conflicting else ""
        figures.append(f'<figure class="pair{" conflicting" if conflicting else ""}"><div class="sides">'
                       f'{_side(row, "a")}{_side(row, "b")}</div><figcaption>{html.escape(what)}</figcaption>'
                       f"</figure>")
    more = f" The first {len(rows)} are shown; all are listed in <code>pairs.csv</code>." if total > len(rows) else ""
    return f'<p>{total} pairs.{more}</p><div class="pairs" id="pairs">{"".join(figures)}</div>'


def _row(name: str, value) -> str:
    return f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"


def _stats_table(report: dict) -> str:
    stats = report.get("stats", {})
    exact, near = report.get("exact", {}), report.get("near", {})
    rows = [("images", report["images"]), ("rows", report["rows"]), ("unreadable", report["unreadable"]),
            ("DISCARD rows", report["discarded"]), ("pairs across splits", report["leakage"]),
            ("conflicting pairs", report["conflicting"]),
            ("exact copies: leakage / conflicting / redundant",
             f"{exact.get('leakage', 0)} / {exact.get('conflicting', 0)} / {exact.get('redundant', 0)}"),
            (f"near copies (<= {report['near_duplicate_distance']} bits): across / within / conflicting",
             f"{near.get('across', 0)} / {near.get('within', 0)} / {near.get('conflicting', 0)}"),
            ("TRAIN imbalance (largest / smallest label)", f"{report['imbalance']:.2f}")]
    rows += [(f"share {k[6:].replace('_', ' ')}", f"{v:.1%}") for k, v in stats.items() if k.startswith("share_")]
    rows += [("formats", ", ".join(f"{k} {v}" for k, v in stats.get("formats", {}).items())),
             ("modes", ", ".join(f"{k} {v}" for k, v in stats.get("modes", {}).items()))]
    rows += [(f"set to DISCARD by --fix: {k}", v) for k, v in report.get("fixed", {}).items()]
    counts = report.get("counts", {})
    labels = sorted({label for per_label in counts.values() for label in per_label})
    splits = [s for s in SPLITS if s in counts]
    header = "".join(f"<th>{s}</th>" for s in splits)
    count_rows = "".join(f"<tr><th>{html.escape(label)}</th>"
                         + "".join(f"<td>{counts[s].get(label, 0)}</td>" for s in splits) + "</tr>"
                         for label in labels)
    return (f'<div class="charts"><table id="stats"><caption>Statistics</caption>'
            f'{"".join(_row(n, v) for n, v in rows)}</table>'
            f"<table><caption>Images per label and split</caption><tr><th></th>{header}</tr>{count_rows}</table>"
            f"</div>")


def section(folder: str, heading: str = "h2") -> str:
    """The validation's findings in `folder` (validation.json, pairs.csv) as an HTML fragment."""
    report = json.loads(storage.read_text(storage.join(folder, REPORT_FILE)))
    rows, total = shown_pairs(storage.join(folder, PAIRS_FILE))
    problems = report.get("problems", [])
    verdict = (f'<p class="fail">The gate failed: {html.escape("; ".join(problems))}.</p>' if problems
               else '<p class="pass">The gate passed.</p>')
    too_few = "".join(f"<li>{html.escape(t)}</li>" for t in report.get("too_few", []))
    return (f'<section id="validation"><style>{SECTION_STYLE}</style><{heading}>Data validation</{heading}>{verdict}'
            + (f"<p>Labels short of images:</p><ul>{too_few}</ul>" if too_few else "")
            + f"<h3>Pairs across splits and with conflicting labels</h3>{_pairs_gallery(rows, total)}"
            + f'<h3>Balance and sizes</h3><div class="charts">{_balance_chart(report.get("counts", {}))}'
            + f'{_size_chart(report.get("stats", {}))}</div>{_stats_table(report)}</section>')


def page(folder: str, title: str = "catsdogs data validation") -> str:
    """validation.html: the section as a page of its own."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{section(folder)}</body></html>\n")
