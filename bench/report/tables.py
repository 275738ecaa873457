"""The report's tables, built from the runs DataFrame: accuracy with t-intervals, the learning-rate gap, rank
stability across learning rates, trainability and run status (efficiency: ``bench.report.efficiency``).

Each builder returns a :class:`Table` (display strings with column groups and bold cells, plus the numbers
behind them for the CSV) or None when the results cannot support it (e.g. a single retraining LR); renderers
for Markdown, LaTeX and HTML live in ``bench.report.render``.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.report.cells import LEVEL, PERCENT, Cell, cells
from bench.report.stats import MIN_PAIRS, beats_every_other, holm, kendall_tau, paired_t_test

log = logging.getLogger(__name__)

KEY = ""  # column group of the row keys (ratio, method)


@dataclass
class Table:
    """One table: a header of (group, label) columns, rows of display strings, bold cells and CSV numbers."""

    name: str
    title: str
    note: str
    header: list[tuple[str, str]]
    rows: list[list[str]]
    data: pd.DataFrame
    bold: set[tuple[int, int]] = field(default_factory=set)


def lr_label(lr: float) -> str:
    """How tables and legends name a retraining LR: 'lr 0.01'."""
    return f"lr {lr:g}"


def ratio_order(runs: pd.DataFrame) -> list[str]:
    """Ratio labels in increasing numeric order (per-layer profiles, which have no number, last)."""
    pairs = runs[["ratio", "ratio_value"]].drop_duplicates("ratio")
    pairs = pairs.assign(missing=pairs.ratio_value.isna()).sort_values(["missing", "ratio_value", "ratio"])
    return list(pairs.ratio)


def learning_rates(runs: pd.DataFrame) -> list[float]:
    """The retraining learning rates, highest first (the order of the TPP paper's Table 1)."""
    return sorted(runs.lr.dropna().unique().tolist(), reverse=True)


def per_seed(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """One value per (ratio, method, seed): for quantities fixed before retraining (all LRs share them)."""
    rows = runs.dropna(subset=[column])
    return rows.drop_duplicates(["ratio", "method", "seed"])


def not_ok(runs: pd.DataFrame, by: list[str]) -> dict[tuple[Any, ...], str]:
    """'2 diverged, 1 failed' per group of ``by``, for the runs whose status is not ok."""
    bad = runs[runs.status != "ok"]
    out = {}
    for key, group in bad.groupby(by, sort=False):
        counts = group.status.value_counts()
        out[key if isinstance(key, tuple) else (key,)] = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return out


def _expected(found: Iterable[Cell]) -> int:
    """The largest seed count among the cells: fewer is flagged with (n=k)."""
    return max((c.n for c in found), default=0)


def resolved_best(runs: pd.DataFrame, ratio: str, lr: float, alpha: float = 0.05) -> str | None:
    """The method with the highest mean final accuracy at this ratio and LR, but only when it beats every other
    method by a paired difference over seeds that Holm's correction resolves (``stats.beats_every_other``) and every
    method there has an ok run at every seed (none failed, diverged, unfinished or missing): the one case in which a
    table bolds a winner. Never with one seed, never inside the noise, never beside a run that is not a result."""
    here, at_ratio = runs[(runs.ratio == ratio) & (runs.lr == lr)], runs[runs.ratio == ratio]
    if (here.status != "ok").any() or len(here) < at_ratio.method.nunique() * at_ratio.seed.nunique():
        return None
    by_seed = here.pivot_table(index="seed", columns="method", values="acc_final", aggfunc="first")
    if by_seed.shape[1] < 2:
        return None
    ordered = by_seed.mean().sort_values(ascending=False)
    best = ordered.index[0]
    return str(best) if beats_every_other(by_seed[best], [by_seed[m] for m in ordered.index[1:]], alpha) else None


def row_keys(runs: pd.DataFrame, methods: list[str]) -> list[tuple[str, str]]:
    """(ratio, method) row keys present in the runs, ratios ascending, methods in report order."""
    present = set(zip(runs.ratio, runs.method))
    return [(r, m) for r in ratio_order(runs) for m in methods if (r, m) in present]


def reference_lookup(reference: pd.DataFrame | None, runs: pd.DataFrame) -> dict[tuple[str, str, float], Cell]:
    """Published (mean, std as ``half``, n=0 unknown) per (ratio, method, lr) for this suite's model and dataset."""
    if reference is None or runs.empty:
        return {}
    model, dataset = runs.model.iloc[0], runs.dataset.iloc[0]
    rows = reference[(reference.model == model) & (reference.dataset == dataset)]
    if rows.empty:
        log.warning("reference %s has no rows for model '%s' on '%s'; no published numbers shown",
                    reference.attrs.get("path", "?"), model, dataset)
    return {(r.ratio, r.method, float(r.lr)): Cell(float(r.acc_mean), float(r.acc_std), 0) for r in rows.itertuples()}


def _ref_lr(lookup: dict[tuple[str, str, float], Cell], ratio: str, method: str, lr: float) -> Cell | None:
    """The published cell at (ratio, method, lr), LRs compared with a float tolerance."""
    return next((c for (r, m, x), c in lookup.items() if r == ratio and m == method and math.isclose(x, lr)), None)


# ----------------------------------------------------------------------------------------- accuracy

def accuracy_table(runs: pd.DataFrame, methods: list[str], reference: pd.DataFrame | None = None) -> Table:
    """Final test accuracy (%) per method × ratio, one column group per retraining LR, best per ratio in bold."""
    ok = runs[runs.status == "ok"]
    acc = cells(ok, lambda f: f.acc_final * 100, ["ratio", "method", "lr"], PERCENT)
    bad = not_ok(runs, ["ratio", "method", "lr"])
    lookup = reference_lookup(reference, runs)
    lrs = learning_rates(runs)
    with_ref = bool(lookup)
    header = [(KEY, "ratio"), (KEY, "method")]
    for lr in lrs:
        header += [(lr_label(lr), "acc (%)")] + ([(lr_label(lr), "paper"), (lr_label(lr), "Δ")] if with_ref else [])
    expected = _expected(acc.values())
    rows, data = [], []
    for ratio, method in row_keys(runs, methods):
        row = [ratio, method]
        for lr in lrs:
            cell = acc.get((ratio, method, lr), Cell(math.nan, math.nan, 0))
            problems = bad.get((ratio, method, lr))
            text = cell.text(expected) + (f" [{problems}]" if problems else "")
            row.append(text if cell.n or problems else "")
            ref = _ref_lr(lookup, ratio, method, lr)
            diff = cell.mean - ref.mean if ref else math.nan
            if with_ref:
                row += [f"{ref.mean:.2f} ({ref.half:.2f})" if ref else "", f"{diff:+.2f}" if ref and cell.n else ""]
            data.append({"_row": len(rows), "_column": len(row) - (3 if with_ref else 1), "ratio": ratio,
                         "method": method, "lr": lr, "n": cell.n, "mean": cell.mean,
                         "ci_half": cell.half, "ci_low": cell.low, "ci_high": cell.high,
                         "not_ok": problems or "", "paper_mean": ref.mean if ref else math.nan,
                         "paper_std": ref.half if ref else math.nan, "diff_vs_paper": diff})
        rows.append(row)
    winners = {(ratio, lr): resolved_best(runs, ratio, lr) for ratio in set(runs.ratio) for lr in lrs}
    bold = {(d["_row"], d["_column"]) for d in data if winners.get((d["ratio"], d["lr"])) == d["method"]}
    frame = pd.DataFrame(data)
    if not frame.empty:
        frame["best"] = [(i, c) in bold for i, c in zip(frame._row, frame._column)]
        frame = frame.drop(columns=["_row", "_column"])
    note = (f"Final test accuracy after retraining, mean ± half-width of the {LEVEL:.0%} Student-t interval over "
            "seeds (n=k marks cells with fewer seeds than the others; no interval for one seed). Bold: the best "
            "method at that ratio and learning rate, only where it beats every other method by a paired difference "
            "over seeds that a t-test resolves after Holm's correction across the other methods at that ratio and LR "
            f"(p < 0.05; never below {MIN_PAIRS} seeds or with differences without spread), and never where any method "
            "there has a run that failed, diverged, has not finished or is missing. Runs that did not finish ok are "
            "counted in brackets and left out of the mean; each LR here is fixed by hand: see the verdict for each "
            "method at its own validated LR.")
    if with_ref:
        note += (" 'paper' is the published mean (std), not an interval, and Δ = ours − paper, in points; the "
                 "paper's own runs may report best-epoch rather than final accuracy (uncertain in the sources).")
    return Table("accuracy", "Final test accuracy (%)", note, header, rows, frame, bold)


# ----------------------------------------------------------------------------------------- learning-rate gap

def gap_lrs(ok: pd.DataFrame, ratio: str, methods: list[str], lrs: list[float]) -> tuple[float, float]:
    """The LRs a ratio's gap compares: the highest and the lowest at which every method present at that ratio has
    a finished run (an LR where some method always diverged would leave that method without a gap); the grid's
    ends when fewer than two LRs qualify."""
    here = ok[ok.ratio == ratio]
    present = [m for m in methods if (here.method == m).any()]
    usable = [lr for lr in lrs if all(((here.method == m) & (here.lr == lr)).any() for m in present)]
    return (usable[0], usable[-1]) if len(usable) >= 2 else (lrs[0], lrs[-1])


def lr_gap_table(runs: pd.DataFrame, methods: list[str], reference: pd.DataFrame | None = None) -> Table | None:
    """Accuracy at a high minus a low retraining LR per method × ratio, paired by seed: the grid's highest and
    lowest LR at which every method of the ratio finished (see gap_lrs)."""
    lrs = learning_rates(runs)
    if len(lrs) < 2:
        return None
    ok = runs[runs.status == "ok"]
    acc = cells(ok, lambda f: f.acc_final * 100, ["ratio", "method", "lr"], PERCENT)
    lookup = reference_lookup(reference, runs)
    header = [(KEY, "ratio"), (KEY, "method"), (KEY, "LRs compared"), ("high LR", "acc (%)"),
              ("low LR", "acc (%)"), ("gap (points)", "high − low")]
    if lookup:
        header.append(("gap (points)", "paper"))
    expected = _expected(acc.values())
    pairs = {ratio: gap_lrs(ok, ratio, methods, lrs) for ratio in ratio_order(runs)}
    rows, data, tests = [], [], []
    for ratio, method in row_keys(runs, methods):
        high, low = pairs[ratio]
        mine = ok[(ok.ratio == ratio) & (ok.method == method)]
        by_seed = mine.pivot_table(index="seed", columns="lr", values="acc_final", aggfunc="first")
        paired = by_seed[[high, low]].dropna() if {high, low} <= set(by_seed.columns) else by_seed.iloc[:0]
        differences = (paired[high] - paired[low]) * 100 if len(paired) else pd.Series(dtype=float)
        gap = Cell.of(differences, (-100.0, 100.0)) if len(paired) else Cell(math.nan, math.nan, 0)
        ends = runs[(runs.ratio == ratio) & (runs.method == method) & runs.lr.isin([high, low])]
        diverged = int((ends.status == "diverged").sum())  # no t-test across a diverged seed (issue 27)
        tests.append(paired_t_test(differences.to_numpy(dtype=float)[: None if not diverged else 0]))
        a, b = (acc.get((ratio, method, lr), Cell(math.nan, math.nan, 0)) for lr in (high, low))
        row = [ratio, method, f"{high:g} − {low:g}", a.text(expected), b.text(expected),
               f"diverged seed: not tested ({diverged} diverged)" if diverged else
               gap.text(expected) if gap.n else "—"]
        ref_high, ref_low = _ref_lr(lookup, ratio, method, high), _ref_lr(lookup, ratio, method, low)
        ref_gap = ref_high.mean - ref_low.mean if ref_high and ref_low else math.nan
        if lookup:
            row.append(f"{ref_gap:+.2f}" if not math.isnan(ref_gap) else "")
        rows.append(row)
        data.append({"ratio": ratio, "method": method, "lr_high": high, "lr_low": low, "acc_high": a.mean,
                     "acc_low": b.mean, "gap": gap.mean, "gap_ci_half": gap.half, "pairs": gap.n,
                     "paper_gap": ref_gap, "diverged": diverged})
    adjusted = holm([t.p if not t.too_few else math.nan for t in tests])
    bold = {(i, 5) for i, (t, p) in enumerate(zip(tests, adjusted)) if not t.too_few and p < 0.05}
    for record, t, p in zip(data, tests, adjusted):
        record.update(p=t.p, p_holm=p)
    skipped = sorted({lr for ratio, (high, low) in pairs.items() for lr in lrs if lr > high or lr < low}, reverse=True)
    note = ("The trainability bias: accuracy at a high minus a low retraining LR, in points: the grid's highest and "
            "lowest LR at which every method of that ratio finished a run. The gap is the mean of per-seed "
            f"differences (seeds that finished at both LRs), ± the {LEVEL:.0%} t-interval; bold where the paired "
            "t-test resolves it after Holm's correction across every row of this table (the family; p < 0.05, at "
            "least 3 seeds with some spread). A seed that diverged at either LR makes the row 'diverged seed: not "
            "tested' (bimodal data: no t-interval or t-test, never bold). A method that preserves trainability should "
            "depend little on the LR; a large positive gap means it only looks good when retrained with a large LR.")
    if skipped:
        note += (f" Left out: LR {', '.join(f'{lr:g}' for lr in skipped)}, where some method finished no run at a "
                 "ratio (see the accuracy table and the runs that did not finish).")
    if lookup:
        note += " 'paper' is the published gap computed the same way (high − low; TPP's table prints low − high)."
    return Table("lr_gap", "Learning-rate gap (trainability bias)", note, header, rows, pd.DataFrame(data), bold)


# ----------------------------------------------------------------------------------------- rank stability

def _means(runs: pd.DataFrame) -> dict[tuple[Any, ...], Cell]:
    """Final accuracy (%) of the finished runs per (ratio, lr, method)."""
    return cells(runs[runs.status == "ok"], lambda f: f.acc_final * 100, ["ratio", "lr", "method"], PERCENT)


def rank_table(runs: pd.DataFrame, methods: list[str]) -> Table | None:
    """Each method's rank (1 = most accurate) at every ratio and retraining LR."""
    lrs = learning_rates(runs)
    means = _means(runs)
    if len({m for (_, _, m) in means}) < 2:
        return None
    header = [(KEY, "ratio"), (KEY, "method")] + [("rank (mean acc %)", lr_label(lr)) for lr in lrs]
    rows, data, bold, ranks = [], [], set(), {}
    for ratio in ratio_order(runs):
        for lr in lrs:
            present = pd.Series({m: means[(ratio, lr, m)].mean for m in methods if (ratio, lr, m) in means})
            for method, rank in present.rank(ascending=False, method="min").items():
                ranks[(ratio, lr, method)] = int(rank)
    for ratio, method in row_keys(runs, methods):
        row = [ratio, method]
        for j, lr in enumerate(lrs):
            rank = ranks.get((ratio, lr, method))
            row.append(f"{rank} ({means[(ratio, lr, method)].mean:.2f})" if rank else "—")
            if rank == 1 and resolved_best(runs, ratio, lr) == method:
                bold.add((len(rows), 2 + j))
            data.append({"ratio": ratio, "method": method, "lr": lr, "rank": rank,
                         "mean": means[(ratio, lr, method)].mean if rank else math.nan})
        rows.append(row)
    note = ("Ranked at each fixed retraining LR, every method at the same LR: not the verdict's ranking, which puts "
            "each method at its own validation-chosen LR (the two can name different leaders without disagreeing). "
            "Ranked by mean final accuracy (1 = best, ties share the better rank; the mean in brackets); rank 1 is "
            "bold under the accuracy table's rule: paired t-tests resolve it from every other method (Holm, p < 0.05, "
            f"at least {MIN_PAIRS} seeds with some spread) and no method there has a run that failed, diverged, has "
            "not finished or is missing. A method whose rank moves with the LR is judged by a retraining choice.")
    return Table("ranks", "Method ranks per ratio at each fixed learning rate (not the verdict's chosen LRs)", note,
                 header, rows, pd.DataFrame(data), bold)


def rank_stability_table(runs: pd.DataFrame, methods: list[str]) -> Table | None:
    """Kendall's τ between the method rankings at each pair of LRs, per ratio, flagging changed winners."""
    lrs = learning_rates(runs)
    means = _means(runs)
    if len(lrs) < 2 or len({m for (_, _, m) in means}) < 2:
        return None
    pairs = list(itertools.combinations(lrs, 2))
    header = ([(KEY, "ratio"), (KEY, "methods")] + [("winner (margin, points)", lr_label(lr)) for lr in lrs]
              + [("Kendall τ", f"{a:g} vs {b:g}") for a, b in pairs] + [(KEY, "winner changes")])
    rows, data, bold = [], [], set()
    for ratio in ratio_order(runs):
        scores = {lr: pd.Series({m: means[(ratio, lr, m)].mean for m in methods if (ratio, lr, m) in means},
                                dtype=float) for lr in lrs}
        present = set().union(*(s.index for s in scores.values()))
        if len(present) < 2:
            continue
        record: dict[str, Any] = {"ratio": ratio, "methods": len(present)}
        row = [ratio, str(len(present))]
        for lr in lrs:
            ordered = scores[lr].sort_values(ascending=False)
            if ordered.empty:
                row.append("—")
                continue
            winner = str(ordered.index[0])
            margin = ordered.iloc[0] - ordered.iloc[1] if len(ordered) > 1 else math.nan
            row.append(winner + (f" (+{margin:.2f})" if not math.isnan(margin) else ""))
            record[f"winner_lr_{lr:g}"] = winner
            record[f"margin_lr_{lr:g}"] = margin
        for a, b in pairs:
            common = scores[a].index.intersection(scores[b].index)
            tau = kendall_tau(scores[a][common].to_numpy(), scores[b][common].to_numpy())
            row.append(f"{tau:+.2f}" if not math.isnan(tau) else "—")
            record[f"tau_{a:g}_vs_{b:g}"] = tau
        # Whether the winner changes is judged among the methods finished at every LR: a method that failed or is
        # missing at one LR must not make its best rival look like a new winner there.
        compared = sorted(set.intersection(*(set(s.index) for s in scores.values())))
        changes: bool | None = None
        if len(compared) >= 2:
            changes = len({str(scores[lr][compared].idxmax()) for lr in lrs}) > 1
        text = "—" if changes is None else "yes" if changes else "no"
        if changes is not None and len(compared) < len(present):
            text += f" (among the {len(compared)} finished at every LR)"
        row.append(text)
        if changes:
            bold.add((len(rows), len(row) - 1))
        record["winner_changes"] = changes
        rows.append(row)
        data.append(record)
    if not rows:
        return None
    note = ("Ranked at each fixed retraining LR, every method at the same LR (the verdict instead puts each method "
            "at its own validation-chosen LR). Per ratio: the most accurate method at each retraining LR (with its "
            "lead over the runner-up) and Kendall's τ-b between the method rankings at two LRs (1: same order, −1: "
            "reversed; over the methods finished at both). 'yes' (bold) flags ratios where the winner, among the "
            "methods finished at every LR, changes with the retraining LR alone, which is exactly the trainability "
            "bias a benchmark must not hide. But 'no' does not mean no bias: the bias can show as a large "
            "learning-rate gap for one method without a change of winner (see the gap table and the headline). A "
            "margin inside the accuracy table's intervals means the winner is not resolved by these seeds.")
    return Table("rank_stability", "Rank stability across fixed learning rates (not the verdict's chosen LRs)", note,
                 header, rows, pd.DataFrame(data), bold)


# ----------------------------------------------------------------------------------------- trainability

def trainability_table(runs: pd.DataFrame, methods: list[str]) -> Table:
    """Mean Jacobian singular value (dense, after pruning, final) and trainability accuracy per method × ratio."""
    lrs = learning_rates(runs)
    ok = runs[runs.status == "ok"]
    dense = cells(per_seed(runs, "jsv_dense"), "jsv_dense", ["ratio", "method"])
    pruned = cells(per_seed(runs, "jsv_pruned"), "jsv_pruned", ["ratio", "method"])
    train = cells(ok, lambda f: f.acc_trainability * 100, ["ratio", "method", "lr"], PERCENT)
    final = cells(ok, "jsv_final", ["ratio", "method", "lr"])
    header = [(KEY, "ratio"), (KEY, "method"), ("mean JSV", "dense"), ("mean JSV", "after pruning")]
    for lr in lrs:
        header += [(lr_label(lr), "trainability acc (%)"), (lr_label(lr), "final JSV")]
    empty = Cell(math.nan, math.nan, 0)
    expected = _expected(list(pruned.values()) + list(train.values()))
    rows, data = [], []
    for ratio, method in row_keys(runs, methods):
        d, p = dense.get((ratio, method), empty), pruned.get((ratio, method), empty)
        row = [ratio, method, d.text(expected, 3, "g"), p.text(expected, 3, "g")]
        for lr in lrs:
            t, f = train.get((ratio, method, lr), empty), final.get((ratio, method, lr), empty)
            row += [t.text(expected), f.text(expected, 3, "g")]
            data.append({"ratio": ratio, "method": method, "lr": lr, "jsv_dense": d.mean, "jsv_pruned": p.mean,
                         "jsv_pruned_ci_half": p.half, "acc_trainability": t.mean,
                         "acc_trainability_ci_half": t.half, "jsv_final": f.mean, "n": t.n})
        rows.append(row)
    note = ("Mean Jacobian singular value (input→logits, on a fixed probe set) of the dense model, right after "
            "pruning (before any retraining; shared by every LR, so counted once per seed) and after retraining. "
            "Values near 1 mean signals and gradients pass undistorted (dynamical isometry); near 0, the pruned "
            "network is hard to train. Trainability accuracy is the mean test accuracy over the first stage of the "
            "retraining schedule (Wang et al. 2023).")
    return Table("trainability", "Trainability: Jacobian singular values and early accuracy", note, header, rows,
                 pd.DataFrame(data))


# ----------------------------------------------------------------------------------------- status

def status_table(runs: pd.DataFrame, methods: list[str]) -> Table:
    """How many runs of each method are ok, running, failed, diverged or corrupt."""
    statuses = sorted(runs.status.unique())
    counts = runs.groupby(["method", "status"]).size()
    header = [(KEY, "method")] + [("runs", s) for s in statuses] + [("runs", "total")]
    rows, data = [], []
    for method in [m for m in methods if m in set(runs.method)]:
        numbers = [int(counts.get((method, s), 0)) for s in statuses]
        rows.append([method] + [str(n) for n in numbers] + [str(sum(numbers))])
        data.append({"method": method, **dict(zip(statuses, numbers)), "total": sum(numbers)})
    note = ("Every result file found, by status. 'running' also covers runs that were interrupted; run the suite "
            "again to resume them. Diverged runs (the method's training broke) are a result: the verdict counts them "
            "at chance when it chooses an LR and reports them beside the accuracy. Failed runs (an exception, out of "
            "memory, a lost node) and corrupt ones (a result.json that cannot be parsed) are not: they are listed "
            "below, never averaged in, and `bench.py run` on the suite redoes them. An unreadable one (this user may "
            "not read its result.json) is not redone: its owner must make it readable.")
    return Table("status", "Runs by status", note, header, rows, pd.DataFrame(data))


def problem_table(runs: pd.DataFrame) -> Table | None:
    """The runs that did not finish ok, with the error they recorded."""
    bad = runs[runs.status != "ok"].sort_values(["status", "method", "ratio_value", "lr", "seed"])
    if bad.empty:
        return None
    header = [(KEY, c) for c in ("run id", "method", "ratio", "lr", "seed", "status", "epochs", "JSV after pruning",
                                 "error")]
    rows = []
    for r in bad.itertuples():
        error = str(r.error).strip().splitlines()[0][:160] if isinstance(r.error, str) and r.error.strip() else ""
        jsv = "" if pd.isna(r.jsv_pruned) else f"{r.jsv_pruned:.3g}"
        rows.append([r.run_id, r.method, r.ratio, f"{r.lr:g}", str(r.seed), r.status, str(r.epochs_done), jsv, error])
    data = bad[["run_id", "method", "ratio", "lr", "seed", "status", "epochs_done", "jsv_pruned", "error"]]
    return Table("problems", "Runs that did not finish", "Running (or interrupted), failed, diverged, corrupt and "
                 "unreadable runs (the result.json named in the error cannot be parsed, or read) with the retraining "
                 "epochs they finished, the mean JSV of their pruned model when it was measured (a "
                 "diverged run keeps it: a value near 0 says the pruned network was hard to train), and the first "
                 "line of their error; their result.json holds the rest.", header, rows, data.reset_index(drop=True))


def left_out_table(left_out: pd.DataFrame) -> Table | None:
    """Runs in the suite's folder that belong to another configuration (or no longer to the suite), grouped by why:
    listed apart, never averaged in."""
    if left_out.empty:
        return None
    header = [(KEY, "runs"), (KEY, "statuses"), (KEY, "why left out"), (KEY, "run ids")]
    rows, data = [], []
    for reason, group in left_out.groupby("reason", sort=False):
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(group.status.value_counts().items()))
        ids = list(group.run_id)
        rows.append([str(len(group)), statuses, str(reason), ", ".join(ids[:4]) + (", ..." if len(ids) > 4 else "")])
        data.append({"runs": len(group), "statuses": statuses, "reason": reason, "run_ids": " ".join(ids)})
    note = ("Result files in this suite's folder that are not runs of the suite as last run: made with another "
            "configuration (e.g. an earlier `--set`), or with a method, ratio, LR or seed since dropped from the "
            "suite. They are not in any other table. To keep a variant's results apart, run it under its own name: "
            "`--set name=<suite>-<variant>`.")
    return Table("left_out", "Runs left out of this report", note, header, rows, pd.DataFrame(data))
