"""A self-contained HTML report of a training run and its evaluation: curves and confusion matrix drawn as
inline SVG, so it opens anywhere (the Vertex UI, a browser, an email) with nothing to fetch."""

import html

from components.evaluate.core import Evaluation

WIDTH, HEIGHT, PAD = 420, 220, 36
COLOURS = {"loss": "#d62728", "val_loss": "#ff9896", "accuracy": "#1f77b4", "val_accuracy": "#aec7e8"}


def _line_chart(title: str, series: dict[str, list[float]]) -> str:
    values = [v for points in series.values() for v in points]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    epochs = max(len(points) for points in series.values())

    def xy(i: int, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (i / max(epochs - 1, 1))
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * ((v - low) / span)
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS.get(name, "#555")
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(xy(i, v) for i, v in enumerate(points))}"/>')
        legend.append(f'<text x="{WIDTH - PAD - 90}" y="{PAD + 14 * n}" fill="{colour}" font-size="11">{name}</text>')
    axes = (f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
            f'<text x="{PAD}" y="{HEIGHT - 10}" font-size="11">epoch 1</text>'
            f'<text x="{WIDTH - PAD - 40}" y="{HEIGHT - 10}" font-size="11">epoch {epochs}</text>'
            f'<text x="2" y="{PAD}" font-size="11">{high:.3g}</text>'
            f'<text x="2" y="{HEIGHT - PAD}" font-size="11">{low:.3g}</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{html.escape(title)}">{axes}{"".join(lines)}{"".join(legend)}</svg></figure>')


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
    return (f'<table class="confusion"><caption>Confusion matrix on {result.split} (rows: true, columns: '
            f"predicted)</caption><tr><th></th>{header}</tr>{''.join(rows)}</table>")


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
                decision: dict | None = None) -> str:
    per_class = "".join(
        f"<tr><th>{html.escape(n)}</th><td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td></tr>"
        for n, s in result.per_class().items()
    )
    curves = _line_chart("Loss", {k: v for k, v in history.items() if k.endswith("loss")}) + _line_chart(
        "Accuracy", {k: v for k, v in history.items() if k.endswith("accuracy")}
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font-family: sans-serif; margin: 2em; }} figure {{ display: inline-block; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
td {{ text-align: right; }}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{result.split}: accuracy <b>{result.accuracy:.4f}</b>, AUC <b>{result.auc:.4f}</b> on {result.examples} images.</p>
{_decision(decision)}
{curves}
{_confusion_matrix(result)}
<table><caption>Per class</caption><tr><th></th><th>precision</th><th>recall</th></tr>{per_class}</table>
</body></html>
"""
