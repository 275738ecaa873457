"""What pruning bought, in the report: parameters, FLOPs and latency before and after (the efficiency table, with a
latency group per backend the runs were timed in) and the measured speed-up against the FLOP reduction (a figure,
a panel per backend). The backends, and the runs table's ``speedup_<backend>`` columns:
``bench.training.latency_backends``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from bench.report import latency as latency_check
from bench.report.plots import MethodStyles, Plot, figure_legend, figure_style, new_figure, render_figure
from bench.report.tables import KEY, Table, row_keys
from bench.training.latency_backends import backends_in


def _human(count: float) -> str:
    """A count for people: 154010 -> '154.0k', 20084000 -> '20.08M', 987 -> '987'."""
    if math.isnan(count):
        return "—"
    for scale, unit, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(count) >= scale:
            return f"{count / scale:.{digits}f}{unit}"
    return f"{count:.0f}"


def efficiency_table(runs: pd.DataFrame, methods: list[str]) -> Table:
    """Parameters and FLOPs before and after pruning, and a latency speed-up where results record latency."""
    latency = latency_check.latency_columns(runs)
    others = [b for b in backends_in(list(runs.columns)) if b != "eager"]  # deployment runtimes beside eager
    header = [(KEY, "ratio"), (KEY, "method"), ("parameters", "dense"), ("parameters", "pruned"),
              ("parameters", "removed (%)"), ("FLOPs", "dense"), ("FLOPs", "pruned"), ("FLOPs", "speed-up (×)")]
    if latency:
        header += [("latency", "dense (ms)"), ("latency", "pruned (ms)"), ("latency", "speed-up (×)")]
    for backend in others:
        header += [(f"latency, {backend}", "dense (ms)"), (f"latency, {backend}", "pruned (ms)"),
                   (f"latency, {backend}", "speed-up (×)")]
    rows, data, unreliable = [], [], []
    for ratio, method in row_keys(runs, methods):
        mine = runs[(runs.ratio == ratio) & (runs.method == method)]
        mean = {c: float(pd.to_numeric(mine[c]).mean()) for c in
                ("params_dense", "params_pruned", "flops_dense", "flops_pruned")}
        removed = 100 * (1 - mean["params_pruned"] / mean["params_dense"])
        speedup = mean["flops_dense"] / mean["flops_pruned"]
        row = [ratio, method, _human(mean["params_dense"]), _human(mean["params_pruned"]),
               f"{removed:.2f}" if not math.isnan(removed) else "—", _human(mean["flops_dense"]),
               _human(mean["flops_pruned"]), f"{speedup:.2f}" if not math.isnan(speedup) else "—"]
        record = {"ratio": ratio, "method": method, **mean, "params_removed_pct": removed, "flops_speedup": speedup}
        if latency:
            speed, found = latency_check.speedup_cells(runs, mine, *latency)
            row, unreliable = row + speed, unreliable + [found["latency_unreliable"]]
            record.update(found)
        for backend in others:  # the same cells and reliability rule, on this backend's own medians and IQRs
            speed, found = latency_check.speedup_cells(runs, mine, f"latency_{backend}_dense_median_ms",
                                                       f"latency_{backend}_pruned_median_ms")
            row, unreliable = row + speed, unreliable + [found["latency_unreliable"]]
            record.update({f"latency_{backend}_{k.removeprefix('latency_')}": v for k, v in found.items()})
        rows.append(row)
        data.append(record)
    note = ("Parameters and FLOPs of one forward pass on one sample, dense and after physical removal. FLOPs count "
            "2 per multiply-add of convolutions and linear layers (so the speed-up equals the MAC speed-up the TPP "
            "paper prints); 'removed' counts every parameter, BatchNorm included.")
    note += (f" Latency: {latency[0]} vs {latency[1]} (ms per batch, wall-clock inference on the run's device, "
             "suite key latency), as the runs recorded them; a speed-up far below the FLOP ratio means the removed "
             "channels did not make the model proportionally faster." if latency else
             " No latency column: these runs were made with latency measurement switched off (latency.enabled).")
    note += latency_check.reliability_note(runs, latency[0], unreliable) if latency else ""
    if others:
        note += (f" Also timed in {', '.join(others)} (suite key latency.backends; median ms per batch on the CPU, the "
                 "same thread count and Timer procedure as eager): the speed-up where the model is deployed, which "
                 "can differ from eager's and from the FLOP ratio.")
    return Table("efficiency", "Parameter and FLOP reduction", note, header, rows, pd.DataFrame(data))


def speedup_vs_flops(runs: pd.DataFrame, styles: MethodStyles) -> Plot | None:
    """Measured speed-up (dense / pruned median latency) against the FLOP ratio, a panel per latency backend, every
    ok run a point, with the line where latency falls as FLOPs do."""
    backends = [c.removeprefix("speedup_") for c in runs.columns if c.startswith("speedup_")]
    ok = runs[runs.status == "ok"]
    backends = [b for b in backends if pd.to_numeric(ok[f"speedup_{b}"], errors="coerce").notna().any()]
    if ok.empty or not backends:
        return None
    methods = [m for m in styles.order if m in set(ok.method)]
    handles = styles.handles(methods) + [Line2D([], [], color="0.4", linestyle="--", label="speed-up = FLOP ratio")]
    flops = pd.to_numeric(ok.flops_ratio, errors="coerce")
    measured_all = [pd.to_numeric(ok[f"speedup_{b}"], errors="coerce") for b in backends]
    top = float(np.nanmax([flops.max(), *(m.max() for m in measured_all), 1.0])) * 1.1  # shared axes, both ways
    with figure_style():
        fig, axes = new_figure(1, len(backends), (2.8, 2.4), [h.get_label() for h in handles], sharey=True)
        for ax, backend, measured in zip(axes.flat, backends, measured_all):
            for method in methods:
                mine = (ok.method == method) & measured.notna() & flops.notna()
                ax.scatter(flops[mine], measured[mine], color=styles.colours[method], marker=styles.markers[method],
                           s=24, zorder=3)
            ax.plot([0, top], [0, top], color="0.4", linestyle="--", linewidth=0.9)
            ax.axhline(1.0, color="0.6", linewidth=0.7)
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_title(backend)
            ax.set_xlabel("FLOP reduction (dense / pruned)")
        axes[0, 0].set_ylabel("measured speed-up (×)")
        figure_legend(fig, handles)
        png, pdf = render_figure(fig)
    return Plot("speedup_vs_flops", "Measured speed-up against FLOP reduction", (
        "Each point is one finished run: the dense model's median latency over the pruned model's (suite key latency: "
        "batch size, Timer blocks, the run's thread count) against the FLOP ratio, one panel per latency backend "
        "(eager PyTorch on the run's device; onnxruntime on the CPU). On the dashed line latency falls as FLOPs do; "
        "points below it are the gap between fewer FLOPs and a faster model, below the grey line the pruned model is "
        "slower. Wall-clock, so it varies with the machine's load."), png, pdf)
