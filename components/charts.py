"""Charts for the HTML reports (evaluation, validation): matplotlib figures written as inline SVG."""

from __future__ import annotations

import io


def figure(width: float, height: float):
    """A white matplotlib Figure of width x height inches."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    chart = Figure(figsize=(width, height), dpi=96, layout="constrained")
    chart.set_facecolor("white")
    return chart


def svg(chart, salt: str) -> str:
    """The figure as inline SVG: text stays text (small, selectable); a salt per chart keeps the element ids of
    several SVGs in one page apart."""
    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        chart.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg"):]
