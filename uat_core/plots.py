"""Plotly figure builders shared by the Streamlit app and the notebooks (one place, one look).

Every builder takes plain Python data (histories are lists of dicts as the runs record them) and
returns a ``plotly.graph_objects.Figure``; notebooks wrap them in ``go.FigureWidget`` for live updates.
Accuracies are fractions in the data and shown as percentages.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .recipes.profiles import ALGORITHMS

# the training algorithms' colours come from the project's one table (recipes/profiles.py); the attacks' are here
PALETTE = {**{a: v.color for a, v in ALGORITHMS.items()},
           "sgd": "#636EFA", "msgd": "#AB63FA", "adam": "#00CC96", "idf": "#7F7F7F", "alg2": "#EF553B"}
LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=80, b=45), height=380,
              title_y=0.97, title_yanchor="top",
              legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="right", x=1))


def _pct(v):
    return None if v is None else 100.0 * v


def _smooth(y, k: int):
    if k <= 1 or len(y) < k:
        return list(y)
    a = np.asarray(y, dtype=float)
    c = np.cumsum(np.insert(a, 0, 0.0))
    head = [a[: i + 1].mean() for i in range(k - 1)]
    return head + list((c[k:] - c[:-k]) / k)


def attack_curve(history: list[dict], title: str = "Alg. 2: minibatch accuracy and loss",
                 smooth: int = 1) -> go.Figure:
    """Accuracy (left axis, %) and clipped loss (right axis) against the step of an attack run."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [h["step"] for h in history]
    fig.add_trace(go.Scatter(x=steps, y=[_pct(v) for v in _smooth([h["acc"] for h in history], smooth)],
                             name="accuracy on x+δ (%)", line=dict(color="#EF553B")), secondary_y=False)
    if history and "loss" in history[0]:
        fig.add_trace(go.Scatter(x=steps, y=_smooth([h["loss"] for h in history], smooth), name="loss",
                                 line=dict(color="#636EFA", dash="dot")), secondary_y=True)
    if history and "target_rate" in history[0]:
        fig.add_trace(go.Scatter(x=steps, y=[_pct(h["target_rate"]) for h in history], name="target rate (%)",
                                 line=dict(color="#00CC96")), secondary_y=False)
    fig.update_layout(title=title, **LAYOUT)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], secondary_y=False)
    fig.update_yaxes(title_text="loss", secondary_y=True, showgrid=False)
    return fig


def race_figure(histories: dict[str, list[dict]], key: str = "acc", smooth: int = 5,
                title: str = "Optimizer race: minibatch accuracy under the perturbation") -> go.Figure:
    """One curve per run (e.g. per optimizer) of ``key`` against the step."""
    fig = go.Figure()
    for name, hist in histories.items():
        y = _smooth([h[key] for h in hist], smooth)
        fig.add_trace(go.Scatter(x=[h["step"] for h in hist], y=[_pct(v) for v in y] if key == "acc" else y,
                                 name=name.upper(), line=dict(color=PALETTE.get(name.lower()))))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="accuracy (%)" if key == "acc" else key, **LAYOUT)
    return fig


def before_after_figure(history: list[dict], title: str = "Universal adversarial training: accuracy before "
                        "and after the ascent step", smooth: int = 5) -> go.Figure:
    """Minibatch accuracy with δ before the ascent step and with the updated δ after it; the gap shaded."""
    pts = [h for h in history if "acc_after" in h]
    fig = go.Figure()
    allsteps = [h["step"] for h in history]
    fig.add_trace(go.Scatter(x=allsteps, y=[_pct(v) for v in _smooth([h["acc_before"] for h in history], smooth)],
                             name="before ascent", line=dict(color="#636EFA")))
    if pts:
        before = [_pct(h["acc_before"]) for h in pts]
        after = [_pct(h["acc_after"]) for h in pts]
        xs = [h["step"] for h in pts]
        fig.add_trace(go.Scatter(x=xs, y=before, mode="lines", line=dict(width=0), showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=xs, y=after, name="after ascent", fill="tonexty",
                                 fillcolor="rgba(239,85,59,0.18)", line=dict(color="#EF553B")))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="minibatch accuracy (%)", **LAYOUT)
    fig.update_yaxes(range=[0, 100])
    return fig


def training_curves(histories: dict[str, list[dict]], key: str = "acc", smooth: int = 5,
                    title: str = "Training: minibatch accuracy") -> go.Figure:
    return race_figure(histories, key, smooth, title)


def sweep_figure(xs, means, stds=None, x_title: str = "β", title: str = "", log_x: bool = False,
                 y_title: str = "accuracy under attack (%)", name: str = "", clean: float | None = None) -> go.Figure:
    """Mean ± std error bars against a swept setting (β, attack-set size, ...). ``xs`` may contain ∞.

    With ``clean`` (a fraction), a dotted line marks the clean accuracy and the y axis spans 0-105%."""
    labels = ["∞" if (isinstance(x, float) and math.isinf(x)) else str(x) for x in xs]
    fig = go.Figure(go.Scatter(x=labels, y=[_pct(m) for m in means], mode="lines+markers", name=name,
                               error_y=None if stds is None else dict(type="data", array=[_pct(s) for s in stds]),
                               line=dict(color="#EF553B")))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, **LAYOUT)
    fig.update_xaxes(type="category")
    if clean is not None:
        fig.add_hline(y=_pct(clean), line_dash="dot", line_color=PALETTE["natural"],
                      annotation_text=f"clean {_pct(clean):.1f}%", annotation_position="top right")
        fig.update_yaxes(range=[0, 105])
    return fig


def robustness_bars(rows: list[dict], title: str = "Clean vs robust accuracy") -> go.Figure:
    """rows: [{"name", "clean_top1", "robust_top1", optional "fixed_top1"}] as grouped bars (%); the best fixed
    pattern (the baseline) is drawn as a hatched bar where the rows have it."""
    names = [r["name"] for r in rows]
    bars = [
        go.Bar(name="clean", x=names, y=[_pct(r["clean_top1"]) for r in rows], marker_color="#636EFA",
               text=[f"{_pct(r['clean_top1']):.1f}" for r in rows], textposition="outside"),
        go.Bar(name="under universal attack", x=names, y=[_pct(r["robust_top1"]) for r in rows],
               marker_color="#EF553B", text=[f"{_pct(r['robust_top1']):.1f}" for r in rows], textposition="outside"),
    ]
    if any(r.get("fixed_top1") is not None for r in rows):
        bars.append(go.Bar(name="best fixed pattern (baseline)", x=names, y=[_pct(r.get("fixed_top1")) for r in rows],
                           marker=dict(color="#FFA15A", pattern_shape="/"), textposition="outside",
                           text=["" if r.get("fixed_top1") is None else f"{_pct(r['fixed_top1']):.1f}" for r in rows]))
    crowded = len(rows) > 4                      # side-by-side labels of three thin bars would overlap: turn them
    if crowded:
        for bar in bars:
            bar.update(textangle=-90, textfont_size=10)
    fig = go.Figure(bars)
    fig.update_layout(title=title, barmode="group", yaxis_title="test accuracy (%)", **LAYOUT)
    fig.update_yaxes(range=[0, 118 if crowded else 105], tickvals=list(range(0, 101, 20)))
    return fig


def study_figure(results: list[dict], paper: tuple[float, float] | None = (0.952, 0.092),
                 title: str = "What makes a classifier fall to one pattern (CIFAR-10, ε = 8)") -> go.Figure:
    """The vulnerability study as horizontal bars, one group per row (%): clean, the paper's Alg. 2 from δ = 0,
    the best fixed pattern (the baseline) and the strong attack. results: ``uat_core.recipes.study.load_results()``
    (dicts with "row", "factor", "change", "clean_top1", "alg2_top1", "fixed_top1", "strong_top1"), drawn in
    the order given (top to bottom). ``paper``: (clean, attacked) of the paper's WRN 32-10, drawn as lines."""
    labels = [f"{r['row']}: {r['change']}" if len(r["change"]) <= 28 else f"{r['row']}: {r['factor']}"
              for r in results]
    series = [("clean", "clean_top1", dict(color="#C8C8C8")),
              ("Alg. 2 from δ = 0", "alg2_top1", dict(color=PALETTE["alg2"], opacity=0.55)),
              ("best fixed pattern (baseline)", "fixed_top1", dict(color="#FFA15A", pattern_shape="/")),
              ("strong attack", "strong_top1", dict(color="#B6232A"))]
    fig = go.Figure([go.Bar(name=name, y=labels, x=[_pct(r.get(k)) for r in results], orientation="h", marker=mk,
                            text=[f"{_pct(r[k]):.1f}" if r.get(k) is not None else "" for r in results],
                            textposition="outside", textfont_size=10)
                     for name, k, mk in series])
    height = max(300, 120 + 92 * len(results))
    fig.update_layout(title=title, barmode="group", xaxis_title="test accuracy (%)",
                      **{**LAYOUT, "height": height, "margin": dict(l=10, r=20, t=90, b=45)})
    fig.update_xaxes(range=[0, 108], tickvals=list(range(0, 101, 20)))
    fig.update_yaxes(autorange="reversed", automargin=True)
    if paper is not None:
        fig.add_vline(x=_pct(paper[1]), line_dash="dot", line_color="#B6232A",
                      annotation_text=f"paper: {_pct(paper[1]):.1f}% under attack", annotation_position="bottom right")
    return fig


def leaderboard_bars(rows: list[dict], current: str | None = None, key: str = "acc",
                     title: str = "Strong attack: the starts, scored on the attack set") -> go.Figure:
    """The strong attack's starts as horizontal bars of accuracy under δ (%; lower = a stronger start).

    rows: the leaderboard (dicts with "start", "acc" or "probe_acc", "dropped_after_round"); ``current``: the
    start being refined now (highlighted)."""
    rows = [r for r in rows if r.get(key) is not None or r.get("probe_acc") is not None]
    names = [r["start"] for r in rows]
    vals = [_pct(r[key] if r.get(key) is not None else r.get("probe_acc")) for r in rows]
    colour = ["#EF553B" if n == current else ("#C8C8C8" if r.get("dropped_after_round") is not None else "#636EFA")
              for n, r in zip(names, rows)]
    fig = go.Figure(go.Bar(x=vals, y=names, orientation="h", marker_color=colour,
                           text=[f"{v:.1f}%" for v in vals], textposition="outside"))
    fig.update_layout(title=title, xaxis_title="accuracy under the start's δ (%)", **{**LAYOUT, "height": 300})
    fig.update_xaxes(range=[0, 105])
    fig.update_yaxes(autorange="reversed")
    return fig


def bank_figure(names: list[str], accs: list[float], clean: float | None = None, highlight: int | None = None,
                title: str = "Accuracy under each fixed pattern of the bank") -> go.Figure:
    """One bar per bank pattern (accuracy %, sorted as given), the clean accuracy as a line."""
    colour = ["#EF553B" if i == highlight else "#636EFA" for i in range(len(names))]
    fig = go.Figure(go.Bar(x=list(range(len(names))), y=[_pct(a) for a in accs], marker_color=colour,
                           hovertext=names, hoverinfo="text+y"))
    fig.update_layout(title=title, xaxis_title="pattern (sorted from strongest to weakest)",
                      yaxis_title="test accuracy (%)", **LAYOUT)
    fig.update_yaxes(range=[0, 105])
    if clean is not None:
        fig.add_hline(y=_pct(clean), line_dash="dot", line_color=PALETTE["natural"],
                      annotation_text=f"clean {_pct(clean):.1f}%", annotation_position="top right")
    return fig


def transfer_heatmap(matrix, sources: list[str], targets: list[str],
                     title: str = "Transfer: accuracy of model (column) under δ made on model (row)") -> go.Figure:
    z = [[_pct(v) for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(z=z, x=targets, y=sources, colorscale="RdYlGn", zmin=0, zmax=100,
                               text=[["" if v is None else f"{v:.1f}" for v in row] for row in z],
                               texttemplate="%{text}",
                               colorbar=dict(title="acc %")))
    fig.update_layout(title=title, xaxis_title="evaluated on", yaxis_title="δ made on", **LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


def per_class_bars(classes, clean, perturbed, title: str = "Per-class accuracy") -> go.Figure:
    fig = go.Figure([go.Bar(name="clean", x=list(classes), y=[_pct(v) for v in clean], marker_color="#636EFA"),
                     go.Bar(name="with δ", x=list(classes), y=[_pct(v) for v in perturbed], marker_color="#EF553B")])
    fig.update_layout(title=title, barmode="group", yaxis_title="accuracy (%)", **LAYOUT)
    return fig


def timing_bars(names, seconds, accs=None, title: str = "Time to build δ") -> go.Figure:
    """Wall time per method, with the accuracy each leaves as the label."""
    text = None if accs is None else [f"{s:.1f} s · acc {_pct(a):.1f}%" for s, a in zip(seconds, accs)]
    fig = go.Figure(go.Bar(x=list(names), y=list(seconds), text=text, textposition="outside",
                           marker_color=[PALETTE.get(n.lower(), "#636EFA") for n in names]))
    fig.update_layout(title=title, yaxis_title="seconds", **LAYOUT)
    return fig


def delta_figure(delta, eps: float, title: str = "δ, shown as δ/(2ε)+0.5") -> go.Figure:
    """The perturbation as a plotly image at the fixed δ/(2ε)+0.5 scale; ``eps`` in pixel units."""
    a = ((delta.detach().cpu().float() / (2 * eps) + 0.5).clamp(0, 1) * 255).round().byte()
    img = a.repeat(3, 1, 1) if a.shape[0] == 1 else a
    fig = go.Figure(go.Image(z=img.permute(1, 2, 0).numpy()))
    fig.update_layout(title=title, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10), height=320)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def refresh(target: go.Figure, source: go.Figure) -> None:
    """Copy the traces and title of a freshly built ``source`` into ``target`` in place.

    For live plots in notebooks: display ``go.FigureWidget(builder(...))`` once, then call
    ``refresh(widget, builder(new_data))`` as a run advances. Traces are updated in place when their
    number matches (no flicker), replaced otherwise.
    """
    if len(target.data) != len(source.data):
        target.data = ()
        target.add_traces(list(source.data))
    else:
        with target.batch_update():
            for t, s in zip(target.data, source.data):
                props = s.to_plotly_json()
                props.pop("type", None)
                t.update(props)
    target.layout.title = source.layout.title
