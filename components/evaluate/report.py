"""A self-contained HTML report of a training run and its evaluation: a gallery of held-out images (mistakes
first), the training curves, ROC (two classes), per-class precision and recall, the confusion matrix, the
reliability diagram, the label-issue gallery and the model card.

One file with everything inline (thumbnails as data: URIs, charts as matplotlib SVG), so it opens anywhere:
the Vertex UI's HTML artifact viewer, W&B, a browser, an email, with nothing to fetch."""

from __future__ import annotations

import base64
import html
import math

from components import charts
from components.evaluate.core import Evaluation, Example

TRAIN_COLOUR, VALIDATION_COLOUR = "#1f77b4", "#ff7f0e"
MISTAKE_COLOUR, CORRECT_COLOUR = "#c62828", "#2e7d32"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 1150px; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.4em; border-bottom: 1px solid #ddd; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
.gallery figure { margin: 0; width: 112px; text-align: center; font-size: 12px; }
.gallery img { width: 96px; height: 96px; object-fit: contain; border: 3px solid; border-radius: 3px; }
.gallery .mistake img { border-color: #c62828; } .gallery .correct img { border-color: #2e7d32; }
.gallery img.saliency { border-color: #888; }
.gallery .mistake figcaption b { color: #c62828; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.charts svg { height: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
pre.model-card { white-space: pre-wrap; background: #f6f6f6; padding: 1em; }
td { text-align: right; } caption { text-align: left; padding-bottom: 4px; } table.confusion { min-width: 20em; }
"""


def _curves(history: dict[str, list[float]]) -> str:
    """Loss and accuracy per epoch, training and validation, side by side."""
    from matplotlib.ticker import MaxNLocator

    panels = [(metric, [k for k in (metric, f"val_{metric}") if history.get(k)]) for metric in ("loss", "accuracy")]
    panels = [(metric, keys) for metric, keys in panels if keys]
    if not panels:
        return ""
    figure = charts.figure(4.2 * len(panels), 3.0)
    for axes, (metric, keys) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            values = history[key]
            axes.plot(range(1, len(values) + 1), values, marker="o",
                      color=VALIDATION_COLOUR if key.startswith("val_") else TRAIN_COLOUR,
                      label="validation" if key.startswith("val_") else "training")
        axes.set_title(metric)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        epochs = max(len(history[k]) for k in keys)
        if epochs <= 12:
            axes.set_xticks(range(1, epochs + 1))
            axes.set_xlim(0.5, epochs + 0.5)
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "accuracy":
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend()
    return charts.svg(figure, "curves")


def _roc(result: Evaluation) -> str:
    if not result.roc:
        return ""
    figure = charts.figure(3.6, 3.4)
    axes = figure.subplots()
    fpr, tpr = [0.0, *result.roc["fpr"]], [0.0, *result.roc["tpr"]]
    auc = f"AUC {result.auc:.3f}" if math.isfinite(result.auc) else "AUC undefined"
    axes.plot(fpr, tpr, drawstyle="steps-post", color=TRAIN_COLOUR, linewidth=2, label=auc)
    axes.plot([0, 1], [0, 1], linestyle="--", color="#999", label="chance")
    axes.set_title(f"ROC, positive class: {result.class_names[1]}")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return charts.svg(figure, "roc")


def _precision_recall(result: Evaluation) -> str:
    scores = result.per_class()
    names = list(scores)
    figure = charts.figure(max(3.6, 0.9 * len(names) + 1.5), 3.4)
    axes = figure.subplots()
    width = 0.38
    for offset, metric, colour in ((-width / 2, "precision", TRAIN_COLOUR), (width / 2, "recall", VALIDATION_COLOUR)):
        values = [scores[n][metric] for n in names]
        bars = axes.bar([i + offset for i in range(len(names))], values, width, label=metric, color=colour)
        axes.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1.3)
    axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_ylabel("score")
    axes.set_title(f"Per class on {result.split}")
    axes.legend(loc="upper center", ncols=2)
    axes.grid(axis="y", alpha=0.3)
    return charts.svg(figure, "per-class")


def _reliability(result: Evaluation) -> str:
    """The reliability diagram: accuracy against mean confidence per bin; a calibrated model sits on the diagonal."""
    bins = [b for b in result.calibration.get("bins", []) if b["count"]]
    if not bins:
        return ""
    figure = charts.figure(3.6, 3.4)
    axes = figure.subplots()
    width = bins[0]["upper"] - bins[0]["lower"]
    axes.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width, align="edge", color=TRAIN_COLOUR,
             edgecolor="white", label="accuracy")
    axes.plot([b["confidence"] for b in bins], [b["confidence"] for b in bins], "o", color=VALIDATION_COLOUR,
              label="mean confidence")
    axes.plot([0, 1], [0, 1], linestyle="--", color="#999", label="calibrated")
    axes.set_title(f"Reliability on {result.split}, ECE {result.calibration['ece']:.3f}")
    axes.set_xlabel("confidence (predicted class's probability)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return charts.svg(figure, "reliability")


def _temperature(result: Evaluation) -> str:
    """Temperature scaling's effect on this split: ECE before and after, accuracy unchanged."""
    before = result.uncalibrated
    if not before:
        return ""
    fitted = (f"T = 1, {html.escape(before['note'])}" if result.temperature == 1 and before.get("note") else
              "fitted on VALIDATION, applied inside the SavedModel")
    return (f'<p id="temperature-scaling">Temperature scaling (T = <b>{result.temperature:.3f}</b>, {fitted}): '
            f'ECE on {result.split} <b>{before["ece"]:.4f}</b> before, '
            f'<b>{result.calibration["ece"]:.4f}</b> after; accuracy {before["accuracy"]:.4f} before, '
            f'{result.accuracy:.4f} after (scaling never changes the likeliest class).</p>')


def _pr_curve(result: Evaluation) -> str:
    point = result.operating_point
    figure = charts.figure(3.6, 3.4)
    axes = figure.subplots()
    axes.plot(result.pr["recall"], result.pr["precision"], color=TRAIN_COLOUR, label="precision-recall")
    axes.plot([point["recall"]], [point["precision"]], "o", color=VALIDATION_COLOUR,
              label=f"threshold {point['threshold'] or 0.5:.3f}")
    axes.set_title(f"Precision-recall of {point['positive']} on {result.split}")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    return charts.svg(figure, "pr")


def _threshold(result: Evaluation) -> str:
    point = result.operating_point
    if not point:
        return ""
    chosen = (f"chosen on VALIDATION for {html.escape(point['chosen_by'].replace('_', ' '))}"
              if point.get("chosen_by", "").startswith("target") else
              "given" if point["threshold"] else "none: the likelier class, i.e. 0.5")
    value = f"{point['threshold']:.4f}" if point["threshold"] else "0.5"
    return (f'<h2 id="threshold">Operating threshold</h2><p>The model answers {html.escape(point["positive"])} '
            f'when its probability is at least <b>{value}</b> ({chosen}). At it on {result.split}: precision '
            f'<b>{point["precision"]:.4f}</b>, recall <b>{point["recall"]:.4f}</b> of '
            f'{html.escape(point["positive"])}.</p><div class="charts">{_pr_curve(result)}</div>')


def _calibration(result: Evaluation) -> str:
    if not result.calibration:
        return ""
    rows = "".join(f"<tr><td>{b['lower']:.1f}&ndash;{b['upper']:.1f}</td><td>{b['count']}</td>"
                   f"<td>{b['confidence']:.3f}</td><td>{b['accuracy']:.3f}</td></tr>"
                   for b in result.calibration["bins"] if b["count"])
    return (f'<h2 id="calibration">Calibration</h2><p>Expected calibration error (ECE) on {result.split}: '
            f'<b>{result.calibration["ece"]:.4f}</b>: the mean gap, weighted by images, between how sure the '
            f'model is and how often it is right.</p>{_temperature(result)}<div class="charts">{_reliability(result)}'
            f"<table><caption>Per confidence bin</caption><tr><th>confidence</th><th>images</th>"
            f"<th>mean confidence</th><th>accuracy</th></tr>{rows}</table></div>")


def _issue_thumbnail(example: Example) -> str:
    given, predicted = html.escape(example.true), html.escape(example.predicted)
    source = "data:image/jpeg;base64," + base64.b64encode(example.thumbnail).decode()
    text = f"labelled {given}, model says {predicted}; p({given}) = {example.confidence:.3f}"
    return (f'<figure class="mistake"><img src="{source}" alt="{text}" title="{text}">'
            f"<figcaption>{given} &rarr; <b>{predicted}</b> {example.confidence:.2f}</figcaption></figure>")


def _label_issues(result: Evaluation) -> str:
    found = len(result.label_issues)
    text = (f"{found} of the {result.examples} {result.split} images have a given label the model finds unlikely "
            "(its probability is below that class's average while another class is above its own)")
    if not found:
        return f'<h2 id="label-issues">Label issues</h2><p>{text}.</p>'
    return (f'<h2 id="label-issues">Label issues</h2><p>{text}; all are listed in <code>label_issues.csv</code> '
            f"beside this report, least likely first; check and relabel them, then re-run. The first "
            f"{len(result.issue_gallery)}: caption: given label &rarr; predicted, and the given label's "
            f'probability.</p><div class="gallery" id="label-issue-gallery">'
            f'{"".join(_issue_thumbnail(e) for e in result.issue_gallery)}</div>')


def _confusion_matrix(result: Evaluation) -> str:
    matrix = result.confusion_matrix
    largest = max(max(row) for row in matrix) or 1
    header = "".join(f"<th>{html.escape(n)}</th>" for n in result.class_names)
    rows = []
    for name, row in zip(result.class_names, matrix):
        cells = "".join(
            f'<td style="background: rgba(31,119,180,{count / largest:.2f})">{count}</td>' for count in row
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return (f'<table class="confusion"><caption>Confusion matrix (rows: true, columns: predicted)</caption>'
            f"<tr><th></th>{header}</tr>{''.join(rows)}</table>")


def _per_class_table(result: Evaluation) -> str:
    rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td></tr>"
                   for n, s in result.per_class().items())
    return f"<table><caption>Per class</caption><tr><th></th><th>precision</th><th>recall</th></tr>{rows}</table>"


def _thumbnail(example: Example) -> str:
    kind = "mistake" if example.mistake else "correct"
    true, predicted = html.escape(example.true), html.escape(example.predicted)
    source = "data:image/jpeg;base64," + base64.b64encode(example.thumbnail).decode()
    text = f"true {true}, predicted {predicted} ({example.confidence:.2f})"
    saliency = ""
    if example.saliency:
        heat = "data:image/jpeg;base64," + base64.b64encode(example.saliency).decode()
        saliency = f'<img class="saliency" src="{heat}" alt="where the model looked: {text}" title="saliency">'
    return (f'<figure class="{kind}"><img src="{source}" alt="{text}" title="{text}">{saliency}'
            f"<figcaption>{true} &rarr; <b>{predicted}</b> {example.confidence:.2f}</figcaption></figure>")


def _saliency_note(result: Evaluation) -> str:
    done = result.saliency
    if done.get("skipped"):
        return f'<p id="saliency">Saliency skipped: {html.escape(done["skipped"])}.</p>'
    if not done.get("images"):
        return ""
    return (f'<p id="saliency">Below the first {done["images"]}: where the model looked for its prediction '
            f"(integrated gradients through the exported model; red: the pixels that raised the predicted "
            f"class's probability most), {done['seconds']:.1f} s.</p>")


def _gallery(result: Evaluation) -> str:
    if not result.gallery:
        return ""
    mistakes = sum(e.mistake for e in result.gallery)
    shown = f"{len(result.gallery)} of the {result.examples} {result.split} images"
    if mistakes:
        order = (f"the {mistakes} {'mistake' if mistakes == 1 else 'mistakes'} first (red border, surest first), "
                 "then correct answers (green), least sure first")
    else:
        order = "no mistakes among them; least sure first"
    return (f'<h2>Held-out images</h2><p>{shown} as the model saw them: {order}. Caption: true label &rarr; '
            f'predicted label, and the predicted class\'s probability.</p>{_saliency_note(result)}'
            f'<div class="gallery" id="gallery">{"".join(_thumbnail(e) for e in result.gallery)}</div>')


def _decision(decision: dict | None) -> str:
    """The champion/challenger decision (components/evaluate/champion.py) as a paragraph."""
    if not decision:
        return ""
    champion = ""
    if decision.get("champion_accuracy") is not None:
        champion = (f"; champion (version {html.escape(str(decision.get('champion_version')))}) accuracy "
                    f"<b>{decision['champion_accuracy']:.4f}</b> on the same images")
    verdict = "deployed" if decision["published"] else "not deployed"
    return f"<p>Decision: <b>{verdict}</b>{champion}. {html.escape(decision['reason'])}.</p>"


def html_report(result: Evaluation, history: dict[str, list[float]], title: str = "catsdogs model",
                decision: dict | None = None, model_card: str = "", extra: str = "") -> str:
    """`extra`: HTML sections of other stages shown after the gallery (the data validation's findings)."""
    auc = f", AUC <b>{result.auc:.4f}</b>" if math.isfinite(result.auc) else ""
    curves = _curves(history)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{result.split}: accuracy <b>{result.accuracy:.4f}</b>{auc} on {result.examples} images; classes
{", ".join(html.escape(n) for n in result.class_names)}.</p>
{_decision(decision)}
{_gallery(result)}
{extra}
<h2>Evaluation on {result.split}</h2>
<div class="charts">{_roc(result)}{_precision_recall(result)}</div>
<div class="charts">{_confusion_matrix(result)}{_per_class_table(result)}</div>
{_calibration(result)}
{_threshold(result)}
{_label_issues(result)}
{'<h2>Training</h2><div class="charts">' + curves + '</div>' if curves else ''}
{'<h2 id="model-card">Model card</h2><pre class="model-card">' + html.escape(model_card) + '</pre>'
 if model_card else ''}
</body></html>
"""


def step_summary(scores: dict) -> str:
    """The evaluate step's one line (components/step_summary.py), from its Metrics: the held-out accuracy and AUC, the
    champion's, calibration, label issues and the saliency maps' time."""
    auc = f", AUC {scores['auc']:.3f}" if "auc" in scores else ""
    champion = ""
    if "champion_accuracy" in scores:
        version = _count(scores.get("champion_version", "?"))
        champion = f"; champion (version {version}) {scores['champion_accuracy']:.3f}"
    insight = ""
    if "ece" in scores:
        insight = f"; ECE {scores['ece']:.3f}, {_count(scores.get('label_issues', 0))} label issues"
    if "saliency_seconds" in scores:
        insight += f", saliency {scores['saliency_seconds']:.1f} s"
    return (f"{scores.get('split', 'held-out')} accuracy {scores['accuracy']:.3f}{auc} "
            f"on {_count(scores.get('examples', 0))} images{champion}{insight}")


def _count(value) -> str:
    """A count logged as a KFP metric (a float): 12.0 -> "12"."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
