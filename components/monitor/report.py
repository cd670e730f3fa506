"""monitor.html: the verdict, a table of the signals, and a plot per signal as inline SVG (no JavaScript,
no external files: it opens from a bucket or an e-mail attachment)."""

from __future__ import annotations

import html

import numpy as np

from components.monitor.core import DRIFT, NO_DRIFT, Window

BASE, WINDOW = "#4c78a8", "#e45756"
WIDTH, HEIGHT = 320, 150


def _bars(pairs: list[tuple[str, float, float]]) -> str:
    """Grouped bars (baseline, window) per category, values 0..1."""
    slot = WIDTH / max(len(pairs), 1)
    parts = []
    for i, (name, a, b) in enumerate(pairs):
        x = i * slot + slot * 0.15
        w = slot * 0.35
        for j, (value, colour) in enumerate(((a, BASE), (b, WINDOW))):
            h = value * (HEIGHT - 30)
            parts.append(f'<rect x="{x + j * w:.1f}" y="{HEIGHT - 20 - h:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{html.escape(name)}: {value:.3f}</title></rect>')
        parts.append(f'<text x="{x + w:.1f}" y="{HEIGHT - 5}" font-size="11" text-anchor="middle">'
                     f'{html.escape(name[:14])}</text>')
    return _svg("".join(parts))


def _histograms(a: np.ndarray, b: np.ndarray, bins: int = 24) -> str:
    """Two overlaid density histograms on a shared range."""
    low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    ha = np.histogram(a, edges)[0] / max(len(a), 1)
    hb = np.histogram(b, edges)[0] / max(len(b), 1)
    top = max(ha.max(), hb.max(), 1e-9)
    step = WIDTH / bins
    parts = []
    for values, colour in ((ha, BASE), (hb, WINDOW)):
        points = " ".join(f"{i * step:.1f},{HEIGHT - 20 - v / top * (HEIGHT - 30):.1f} "
                          f"{(i + 1) * step:.1f},{HEIGHT - 20 - v / top * (HEIGHT - 30):.1f}"
                          for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts.append(f'<text x="0" y="{HEIGHT - 5}" font-size="11">{low:.3g}</text>'
                 f'<text x="{WIDTH}" y="{HEIGHT - 5}" font-size="11" text-anchor="end">{high:.3g}</text>')
    return _svg("".join(parts))


def _scatter(a: np.ndarray, b: np.ndarray, limit: int = 400) -> str:
    """Both embeddings on the baseline's first two principal components."""
    mean = a.mean(0)
    _, _, vt = np.linalg.svd(a - mean, full_matrices=False)
    pa, pb = (a[:limit] - mean) @ vt[:2].T, (b[:limit] - mean) @ vt[:2].T
    both = np.concatenate([pa, pb])
    low, span = both.min(0), np.maximum(both.max(0) - both.min(0), 1e-9)
    parts = []
    for points, colour in ((pa, BASE), (pb, WINDOW)):
        for x, y in (points - low) / span:
            parts.append(f'<circle cx="{5 + x * (WIDTH - 10):.1f}" cy="{5 + (1 - y) * (HEIGHT - 10):.1f}" r="2" '
                         f'fill="{colour}" fill-opacity="0.5"/>')
    return _svg("".join(parts))


def _svg(body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}">{body}</svg>')


def html_report(result: dict, baseline: dict, window: Window) -> str:
    verdict = result["verdict"]
    colour = {DRIFT: "#b00020", NO_DRIFT: "#1b7f3b"}.get(verdict, "#8a6d00")
    head = (f"<h1>Drift monitor: version {result['version']}</h1>"
            f'<p class="verdict" style="color:{colour}"><b>{html.escape(verdict)}</b>'
            + (f": {html.escape(', '.join(result['drifted']))}" if result["drifted"] else "") + "</p>"
            f"<p>{result['requests']} requests ({html.escape(result['first'] or '-')} to "
            f"{html.escape(result['last'] or '-')}) against a baseline of {baseline['images']} held-out "
            f"{html.escape(baseline.get('split') or '')} images; Holm-corrected p-values, alpha {result['alpha']}; "
            f"{result['other_versions']} requests answered by other versions were left out.</p>"
            f'<p><span style="color:{BASE}">&#9632; baseline</span> &nbsp; '
            f'<span style="color:{WINDOW}">&#9632; requests</span></p>')
    if not result["signals"]:
        return _page(head + f"<p>Fewer than {result['min_requests']} requests: no verdict.</p>")
    rows = "".join(
        f"<tr{' class=drift' if s['drifted'] else ''}><td>{html.escape(s['name'])}</td><td>{s['test']}</td>"
        f"<td>{s['effect']:.4g}</td><td>{s['p_value']:.3g}</td><td>{s['adjusted_p']:.3g}</td>"
        f"<td>{'drift' if s['drifted'] else ''}</td></tr>" for s in result["signals"])
    table = ("<table><tr><th>signal</th><th>test</th><th>effect</th><th>p</th><th>p (Holm)</th><th></th></tr>"
             f"{rows}</table>")
    signals = {s["name"]: s for s in result["signals"]}
    base_rows = baseline["rows"]
    plots = []
    shares = signals["class shares"]["detail"]
    plots.append(("class shares", _bars(list(zip(shares["classes"], shares["baseline"], shares["window"])))))
    plots.append(("confidence", _histograms(np.asarray(base_rows["confidence"]),
                                            np.array([r["confidence"] for r in window.rows]))))
    plots.append(("embedding", _scatter(np.asarray(base_rows["embedding"]),
                                        np.array([r["embedding"] for r in window.rows]))))
    base_stats = np.asarray(base_rows["image_stats"])
    window_stats = np.array([r["image_stats"] for r in window.rows])
    for i, name in enumerate(baseline["image_stats_names"]):
        plots.append((f"image stat: {name}", _histograms(base_stats[:, i], window_stats[:, i])))
    figures = "".join(
        f"<figure{' class=drift' if signals[name]['drifted'] else ''}><figcaption>{html.escape(name)}"
        f"{' &mdash; drift' if signals[name]['drifted'] else ''}</figcaption>{svg}</figure>" for name, svg in plots)
    note = ("<p class=note>No thumbnails: the request log carries no image reference (the server logs profiles, "
            "not images).</p>")
    return _page(head + table + f"<div class=plots>{figures}</div>" + note)


def _page(body: str) -> str:
    style = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}tr.drift td{background:#fde2e2}"
             ".plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #ddd;padding:6px}"
             "figure.drift{border-color:#b00020}figcaption{font-size:13px;margin-bottom:4px}.note{color:#666}")
    return f"<!doctype html><html><head><meta charset=utf-8><title>catsdogs monitor</title><style>{style}</style>" \
           f"</head><body>{body}</body></html>"
