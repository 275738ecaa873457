"""The report's figures (seaborn styling on matplotlib's Agg canvas), each saved as PNG and PDF.

Every figure colours a method the same way (:class:`MethodStyles`, built once per report from a colour-blind-safe
palette) and draws a retraining LR with the same line style (highest solid, lowest dotted, as in the TPP
paper's MNIST figure). Intervals are the tables' Student-t intervals, so figures and tables agree.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from bench.report.cells import PERCENT
from bench.report.stats import kendall_tau
from bench.report.tables import Cell, cells, learning_rates, lr_label, per_seed, ratio_order

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p"]
LINESTYLES = ["-", "--", "-.", (0, (3, 1, 1, 1, 1, 1))]  # highest LR first; the lowest is always dotted
PNG_DPI = 110
# A fixed title height skips matplotlib's per-draw title-overlap search, which dominated the render time.
RC = {"axes.titley": 1.0, "axes.titlepad": 4.0}


@dataclass
class Plot:
    """One rendered figure: its file stem, a title, how to read it, and the PNG bytes (for the HTML page)."""

    name: str
    title: str
    note: str
    png: bytes
    pdf: bytes


@dataclass(frozen=True)
class MethodStyles:
    """A fixed method -> colour and marker map, so a method looks the same in every figure of a report."""

    colours: dict[str, tuple[float, float, float]]
    markers: dict[str, str]

    @classmethod
    def for_methods(cls, methods: list[str]) -> MethodStyles:
        """seaborn's colour-blind palette (10 colours) in the given order; beyond ten, colours repeat with new
        markers, so every method stays distinguishable."""
        palette = sns.color_palette("colorblind", 10)
        return cls({m: tuple(palette[i % 10]) for i, m in enumerate(methods)},
                   {m: MARKERS[(i + i // 10) % len(MARKERS)] for i, m in enumerate(methods)})

    @property
    def order(self) -> list[str]:
        """The methods in colour order."""
        return list(self.colours)

    def handles(self, methods: list[str]) -> list[Line2D]:
        """Legend entries (colour and marker) for ``methods``."""
        return [Line2D([], [], color=self.colours[m], marker=self.markers[m], label=m) for m in methods]


def lr_styles(lrs: list[float]) -> dict[float, object]:
    """Line style per retraining LR: highest solid, lowest dotted, those between dashed variants."""
    ordered = sorted(lrs, reverse=True)
    styles: dict[float, object] = {lr: LINESTYLES[min(i, len(LINESTYLES) - 1)] for i, lr in enumerate(ordered)}
    if len(ordered) > 1:
        styles[ordered[-1]] = ":"
    return styles


def chance_percent(runs: pd.DataFrame) -> float:
    """Chance accuracy in percent (100 / classes), NaN when the results do not say how many classes."""
    classes = runs.num_classes.dropna()
    return 100.0 / float(classes.median()) if len(classes) else math.nan


CHANCE_STYLE = {"color": "0.6", "linestyle": (0, (1, 3)), "linewidth": 0.9}  # one look for chance in every figure


def _chance_handle(chance: float) -> list[Line2D]:
    """The legend entry of the chance line, when chance is known."""
    return [] if math.isnan(chance) else [Line2D([], [], label="chance", **CHANCE_STYLE)]


def _chance_line(ax: Axes, chance: float) -> None:
    """Mark chance accuracy (100 / classes) across a panel, when it is known."""
    if not math.isnan(chance):
        ax.axhline(chance, **CHANCE_STYLE)


def file_stem(text: str) -> str:
    """A safe file-name part for a ratio label (profiles contain ':', ',' and '*')."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "ratio"


def figure_style() -> contextlib.AbstractContextManager[None]:
    """seaborn's whitegrid/paper look plus the fixed title position, for the duration of one figure."""
    stack = contextlib.ExitStack()
    stack.enter_context(sns.axes_style("whitegrid"))
    stack.enter_context(sns.plotting_context("paper"))
    stack.enter_context(rc_context(RC))
    return stack


def render_figure(fig: Figure) -> tuple[bytes, bytes]:
    """The figure as PNG and PDF bytes."""
    png, pdf = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI)
    fig.savefig(pdf, format="pdf")
    return png.getvalue(), pdf.getvalue()


def new_figure(rows: int, columns: int, panel: tuple[float, float], legend_labels: list[str], title_lines: int = 1,
            titled_rows: bool = True, bottom_extra: float = 0.0, **subplots: Any) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` × ``columns`` panels of ``panel`` inches with fixed margins in inches and room on the
    right for a legend of ``legend_labels``; fixed margins render several times faster than constrained layout.
    ``titled_rows``: every row has titles and x labels (else only the top row's titles, shared x axes);
    ``bottom_extra``: inches added below the panels for tall tick labels."""
    left, bottom, gap_w = 0.75, 0.55 + bottom_extra, 0.3
    gap_h = 0.35 + 0.18 * title_lines if titled_rows else 0.2
    top = 0.2 + 0.18 * title_lines
    right = 0.5 + 0.075 * max((len(label) for label in legend_labels), default=0)
    width = left + columns * panel[0] + (columns - 1) * gap_w + right
    height = bottom + rows * panel[1] + (rows - 1) * gap_h + top
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, columns, squeeze=False, **subplots)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_w / panel[0], hspace=gap_h / panel[1])
    return fig, axes


def _log(ax: Axes, which: str) -> None:
    """A log scale on the ``which`` ("x" or "y") axis without minor ticks, which made log panels slow to draw."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.xaxis if which == "x" else ax.yaxis).set_minor_locator(NullLocator())


def figure_legend(fig: Figure, handles: list[Line2D]) -> None:
    """One legend for the whole figure, in the right margin ``new_figure`` leaves for it."""
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _grid_shape(n: int, most: int = 4) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels, at most ``most`` per row."""
    columns = min(most, max(n, 1))
    return math.ceil(n / columns), columns


def _band(ax: Axes, x: list[float], found: list[Cell], colour: tuple[float, ...], linestyle: object,
          marker: str) -> None:
    """A mean line with markers and a shaded t-interval band (where an interval exists), from each cell's low and
    high (clipped to its bounds: an accuracy band never leaves [0, 100])."""
    mean = np.array([c.mean for c in found])
    low, high = np.array([c.low for c in found]), np.array([c.high for c in found])
    ax.plot(x, mean, color=colour, linestyle=linestyle, marker=marker, markersize=4, linewidth=1.4)
    if np.isfinite(high).any():
        ax.fill_between(x, np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean),
                        color=colour, alpha=0.18, linewidth=0)


def _accuracy_panels(fig: Figure, axes: np.ndarray, used: int, handles: list[Line2D]) -> tuple[bytes, bytes]:
    """Finish a figure of accuracy panels: y label on the left column, unused panels hidden, legend; rendered."""
    for ax in axes[:, 0]:
        ax.set_ylabel("final test accuracy (%)")
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    figure_legend(fig, handles)
    return render_figure(fig)


def accuracy_vs_lr(runs: pd.DataFrame, styles: MethodStyles) -> Plot | None:
    """Final accuracy against retraining LR (log axis), one line per method with t-interval bands, a panel per ratio."""
    ok = runs[runs.status == "ok"]
    if ok.empty:
        return None
    acc = cells(ok, lambda f: f.acc_final * 100, ["ratio", "method", "lr"], PERCENT)
    dense = per_seed(runs, "acc_dense").acc_dense.mean() * 100
    ratios = ratio_order(ok)
    methods = [m for m in styles.order if m in set(ok.method)]
    lrs = sorted(learning_rates(ok))
    chance = chance_percent(runs)
    handles = styles.handles(methods) + [Line2D([], [], color="0.4", linestyle="--", label="dense")]
    handles += _chance_handle(chance)
    with figure_style():
        rows, columns = _grid_shape(len(ratios))
        fig, axes = new_figure(rows, columns, (2.8, 2.2), [h.get_label() for h in handles], sharey=True)
        for ax, ratio in zip(axes.flat, ratios):
            for method in methods:
                x = [lr for lr in lrs if (ratio, method, lr) in acc]
                if x:
                    _band(ax, x, [acc[(ratio, method, lr)] for lr in x], styles.colours[method], "-",
                          styles.markers[method])
            if not math.isnan(dense):
                ax.axhline(dense, color="0.4", linestyle="--", linewidth=0.8)
            _chance_line(ax, chance)
            _log(ax, "x")
            ax.set_title(f"ratio {ratio}")
            ax.set_xlabel("retraining LR")
        png, pdf = _accuracy_panels(fig, axes, len(ratios), handles)
    return Plot("accuracy_vs_lr", "Accuracy against the retraining learning rate", (
        "One panel per pruning ratio: final test accuracy (mean over seeds, band: 95% t-interval) against the "
        "retraining LR. Crossing lines are the trainability bias: which method wins depends on the LR. The dashed "
        "grey line is the dense model, the dotted one chance (100/classes)."), png, pdf)


def accuracy_vs_ratio(runs: pd.DataFrame, styles: MethodStyles) -> Plot | None:
    """Final accuracy against pruning ratio: colour = method, line style = retraining LR."""
    ok = runs[runs.status == "ok"]
    if ok.empty:
        return None
    acc = cells(ok, lambda f: f.acc_final * 100, ["ratio", "method", "lr"], PERCENT)
    ratios = ratio_order(ok)
    values = ok.drop_duplicates("ratio").set_index("ratio").ratio_value
    numeric = bool(values.notna().all())
    position = {r: float(values[r]) if numeric else float(i) for i, r in enumerate(ratios)}
    methods = [m for m in styles.order if m in set(ok.method)]
    lrs = learning_rates(ok)
    dashes = lr_styles(lrs)
    handles = styles.handles(methods) + [Line2D([], [], color="0.2", linestyle=dashes[lr], label=lr_label(lr))
                                         for lr in lrs]
    chance = chance_percent(runs)
    handles += _chance_handle(chance)
    with figure_style():
        lines = 1 if numeric else max(r.count(",") + 1 for r in ratios)  # a profile: one pattern per line
        fig, axes = new_figure(1, 1, (5.0, 3.2), [h.get_label() for h in handles], bottom_extra=0.14 * (lines - 1))
        ax = axes[0, 0]
        for method in methods:
            for lr in lrs:
                x = [r for r in ratios if (r, method, lr) in acc]
                if x:
                    _band(ax, [position[r] for r in x], [acc[(r, method, lr)] for r in x], styles.colours[method],
                          dashes[lr], styles.markers[method])
        _chance_line(ax, chance)
        if not numeric:
            ax.set_xticks([position[r] for r in ratios], [r.replace(",", "\n") for r in ratios])
        ax.set_xlabel("pruning ratio")
        ax.set_ylabel("final test accuracy (%)")
        figure_legend(fig, handles)
        png, pdf = render_figure(fig)
    return Plot("accuracy_vs_ratio", "Accuracy against the pruning ratio", (
        "Final test accuracy (mean, 95% t-interval band) against the pruning ratio; colour is the method, the line "
        "style the retraining LR (solid: highest, dotted: lowest). Where a method's solid and dotted lines part, "
        "its result depends on the LR. The grey dotted line is chance (100/classes)."), png, pdf)


def epoch_curves(runs: pd.DataFrame, history: pd.DataFrame, ratio: str, styles: MethodStyles) -> Plot | None:
    """The TPP paper's MNIST figure for one ratio: mean JSV (top) and test accuracy (bottom) per retraining epoch,
    a column per method, solid = highest LR and dotted = lowest (LRs between are left out, as in the paper);
    epoch 0 is the model right after pruning."""
    ok = runs[(runs.status == "ok") & (runs.ratio == ratio)]
    curves = history[history.run_id.isin(set(ok.run_id))]
    if curves.empty:
        return None
    start = ok.assign(epoch=0, test_acc=ok.acc_pruned, jsv_mean=ok.jsv_pruned)[
        ["method", "lr", "seed", "epoch", "test_acc", "jsv_mean"]]
    frame = pd.concat([start, curves[["method", "lr", "seed", "epoch", "test_acc", "jsv_mean"]]], ignore_index=True)
    mean = frame.groupby(["method", "lr", "epoch"], sort=True)[["test_acc", "jsv_mean"]].mean().reset_index()
    with_jsv = bool(mean.jsv_mean.notna().any())
    methods = [m for m in styles.order if m in set(ok.method)]
    swept = learning_rates(ok)
    lrs = sorted({swept[0], swept[-1]}, reverse=True)  # the paper's pair; LRs between are in the other figures
    dashes = lr_styles(lrs)
    best = ok.groupby(["method", "lr"]).acc_best.mean() * 100
    jsv0 = per_seed(ok, "jsv_pruned").groupby("method").jsv_pruned.mean()
    handles = [Line2D([], [], color="0.2", linestyle=dashes[lr], label=lr_label(lr)) for lr in lrs]
    with figure_style():
        rows = 2 if with_jsv else 1
        fig, axes = new_figure(rows, len(methods), (2.3, 1.9), [h.get_label() for h in handles], title_lines=2,
                            titled_rows=False, sharex=True, sharey="row")
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(6, integer=True))
        for j, method in enumerate(methods):
            for lr in lrs:
                line = mean[(mean.method == method) & (mean.lr == lr)]
                kwargs = {"color": styles.colours[method], "linestyle": dashes[lr], "linewidth": 1.3}
                if with_jsv:
                    axes[0, j].plot(line.epoch, line.jsv_mean, **kwargs)
                axes[-1, j].plot(line.epoch, line.test_acc * 100, **kwargs)
            summary = " / ".join(f"{best.get((method, lr), math.nan):.2f}" for lr in lrs)
            if method in jsv0:
                summary += f" / {jsv0[method]:.3g}"
            axes[0, j].set_title(f"{method}\n{summary}")
            axes[-1, j].set_xlabel("retraining epoch")
        if with_jsv:
            _log(axes[0, 0], "y")
            axes[0, 0].set_ylabel("mean JSV")
        axes[-1, 0].set_ylabel("test accuracy (%)")
        figure_legend(fig, handles)
        png, pdf = render_figure(fig)
    left_out = " (LRs between are left out)" if len(swept) > 2 else ""
    pair = " / ".join(f"{lr:g}" for lr in lrs)
    return Plot(f"epochs_ratio_{file_stem(ratio)}", f"JSV and accuracy per retraining epoch, ratio {ratio}", (
        "The TPP paper's MNIST figure layout: mean Jacobian singular value (top, log scale) and test accuracy "
        "(bottom) against the retraining epoch, averaged over seeds; epoch 0 is right after pruning. Solid: "
        f"highest LR, dotted: lowest{left_out}. Under each method: best accuracy at {pair} and the mean JSV right "
        "after pruning, as the paper prints them."), png, pdf)


def jsv_vs_accuracy(runs: pd.DataFrame, styles: MethodStyles) -> Plot | None:
    """Mean JSV right after pruning against final accuracy, a panel per LR, with Kendall's τ between the two."""
    ok = runs[(runs.status == "ok") & runs.jsv_pruned.notna()]
    if ok.empty:
        return None
    points = ok.groupby(["lr", "ratio", "method"]).agg(jsv=("jsv_pruned", "mean"), acc=("acc_final", "mean"))
    points = points.reset_index()
    ratios = ratio_order(ok)
    ratio_marker = {r: MARKERS[i % len(MARKERS)] for i, r in enumerate(ratios)}
    methods = [m for m in styles.order if m in set(ok.method)]
    lrs = learning_rates(ok)
    handles = [Line2D([], [], color=styles.colours[m], marker="o", linestyle="", label=m) for m in methods]
    handles += [Line2D([], [], color="0.3", marker=ratio_marker[r], linestyle="", label=f"ratio {r}") for r in ratios]
    with figure_style():
        rows, columns = _grid_shape(len(lrs))
        fig, axes = new_figure(rows, columns, (2.8, 2.2), [h.get_label() for h in handles], sharey=True)
        for ax, lr in zip(axes.flat, lrs):
            mine = points[points.lr == lr]
            for p in mine.itertuples():
                ax.scatter(p.jsv, p.acc * 100, color=styles.colours[p.method], marker=ratio_marker[p.ratio], s=28)
            tau = kendall_tau(mine.jsv.to_numpy(), mine.acc.to_numpy())
            ax.set_title(f"{lr_label(lr)}: Kendall τ = {tau:+.2f}" if not math.isnan(tau) else lr_label(lr))
            if (mine.jsv > 0).all():
                _log(ax, "x")
            ax.set_xlabel("mean JSV right after pruning")
        for ax in axes[:, 0]:
            ax.set_ylabel("final test accuracy (%)")
        for ax in list(axes.flat)[len(lrs):]:
            ax.set_visible(False)
        figure_legend(fig, handles)
        png, pdf = render_figure(fig)
    return Plot("jsv_vs_accuracy", "Trainability right after pruning against final accuracy", (
        "Each point is one method at one ratio (means over seeds): the mean JSV right after pruning against the final "
        "accuracy, one panel per retraining LR; the marker shows the ratio. Kendall's τ measures how well the "
        "JSV orders the final accuracies; with a small LR, poorly trainable (low-JSV) pruned networks should "
        "fall behind."), png, pdf)


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both axes (at most the cost and at least the accuracy, one strictly),
    by increasing cost."""
    ordered = points.sort_values(["cost", "acc"], ascending=[True, False])
    front, best = [], -math.inf
    for index, p in ordered.iterrows():
        if p.acc > best:
            front.append(index)
            best = p.acc
    return ordered.loc[front]


def accuracy_vs_cost(runs: pd.DataFrame, styles: MethodStyles, selected: dict[tuple[str, str], float]
                     ) -> Plot | None:
    """Final accuracy against a run's training FLOPs, one point per method at each ratio (at its ``selected`` LR,
    means over seeds), a panel per ratio with the Pareto front marked."""
    ok = runs[(runs.status == "ok") & pd.to_numeric(runs.cost_flops_total, errors="coerce").gt(0)]
    ok = ok[[selected.get((r, m)) == lr for r, m, lr in zip(ok.ratio, ok.method, ok.lr)]]
    if ok.empty:
        return None
    points = ok.assign(cost=pd.to_numeric(ok.cost_flops_total), acc=ok.acc_final * 100).groupby(
        ["ratio", "method"], sort=False)[["cost", "acc"]].mean().reset_index()
    ratios = [r for r in ratio_order(ok) if r in set(points.ratio)]
    methods = [m for m in styles.order if m in set(points.method)]
    handles = styles.handles(methods) + [Line2D([], [], color="0.3", linestyle="--", marker="o", fillstyle="none",
                                                markersize=9, label="Pareto front")]
    with figure_style():
        rows, columns = _grid_shape(len(ratios))
        fig, axes = new_figure(rows, columns, (3.0, 2.4), [h.get_label() for h in handles])
        for ax, ratio in zip(axes.flat, ratios):
            mine = points[points.ratio == ratio]
            front = pareto_front(mine)
            ax.step(front.cost, front.acc, where="post", color="0.3", linestyle="--", linewidth=1.0)
            ax.scatter(front.cost, front.acc, s=110, facecolors="none", edgecolors="0.3", linewidths=1.0)
            for p in mine.itertuples():
                ax.scatter(p.cost, p.acc, color=styles.colours[p.method], marker=styles.markers[p.method], s=30,
                           zorder=3)
            _log(ax, "x")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # ticks even within one decade
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}".replace("e+", "e")))
            ax.margins(x=0.15, y=0.15)
            ax.set_title(f"ratio {ratio}")
            ax.set_xlabel("training FLOPs per run")
        png, pdf = _accuracy_panels(fig, axes, len(ratios), handles)
    return Plot("accuracy_vs_cost", "Accuracy against training cost", (
        "One point per method at each ratio: final test accuracy (mean over seeds, at the method's selected "
        "retraining LR, as in the verdict) against the training FLOPs a run spent (the shared dense model counted in "
        "full, the method's phase with its regulariser, scoring passes and retraining; log axis). Ringed and joined: "
        "the Pareto front, the methods no other beats on both cost and accuracy at that ratio."), png, pdf)
