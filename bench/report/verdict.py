"""The fair verdict: each method retrained at the LR its *validation* accuracy picks, the regret against the LR
the test set would have picked, paired comparisons across seeds with Holm's correction, and a headline in words.

The protocol "Why is the state of pruning so confusing?" asks for: a comparison is fair only when each method is
retrained at the LR that suits it, chosen without looking at the test set. A run that diverged or failed counts at
chance accuracy (100 / classes) when an LR is chosen and in the accuracy reported there, so an LR that breaks one
seed is not chosen on the others alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.report.plots import chance_percent
from bench.report.stats import PairedTest, against_reference, seeds_to_resolve, spearman_rho
from bench.report.tables import KEY, LEVEL, Cell, Table, per_seed, ratio_order

ALPHA = 0.05  # family-wise error rate of the paired comparisons at one ratio
CHANCE_MARGIN = 5.0  # points above chance at which a mean accuracy still counts as "fell to chance"
BY_VALIDATION = "validation"
BY_TEST = "test (optimistic)"
# no outcome: left out, never counted at chance ("unreadable": this user may not read its result.json)
UNFINISHED = ("running", "unknown", "corrupt", "unreadable", "interrupted")


def outcomes(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per finished run (ok, diverged, failed): ``column`` in percent, with a diverged or failed run at chance."""
    done = runs[~runs.status.isin(UNFINISHED)]
    chance = chance_percent(runs)
    values = pd.to_numeric(done[column]).astype(float) * 100
    value = values.where(done.status == "ok", chance if not math.isnan(chance) else 0.0)
    return done[["ratio", "method", "lr", "seed", "dense_id"]].assign(value=value.to_numpy())


def selected_by(runs: pd.DataFrame) -> str:
    """'validation' when every finished run measured the validation split, else 'test (optimistic)'."""
    ok = runs[runs.status == "ok"]
    return BY_VALIDATION if len(ok) and ok.acc_val_final.notna().all() else BY_TEST


@dataclass
class Selection:
    """One method at one ratio, retrained at its selected LR."""

    ratio: str
    method: str
    lr_selected: float
    acc: Cell  # test accuracy (%) at the selected LR over seeds
    score: float  # the mean selection accuracy (%) at the selected LR: validation, or test without a split
    lr_oracle: float
    acc_oracle: float
    regret: float  # points: the oracle's accuracy minus the selected LR's
    edge: str  # "" or which end of this method's swept LRs the selected LR sits at
    per_seed: pd.Series  # seed -> test accuracy (%) at the selected LR
    dense_ids: pd.Series  # seed -> the dense model the run started from
    by: str = BY_VALIDATION  # what chose the LR: BY_VALIDATION or BY_TEST
    seeds_left_out: tuple[int, ...] = ()  # seeds without a finished run at every LR: not used to compare LRs
    failure_at: float = math.nan  # the accuracy (%) a diverged or failed run counts at: chance, or 0 when unknown

    @property
    def notes(self) -> str:
        """What a reader must know about this choice, in words ("" when nothing)."""
        parts = [f"the best LR may lie outside the grid ({self.edge})"] if self.edge else []
        if self.seeds_left_out:
            seeds = ", ".join(str(s) for s in self.seeds_left_out)
            parts.append(f"seed(s) {seeds} left out: not finished at every LR")
        return "; ".join(parts)


def select_lrs(runs: pd.DataFrame, methods: list[str]) -> list[Selection]:
    """For every ratio and method: the retraining LR with the best mean selection accuracy over seeds, the test
    accuracy there, and the LR the test set would have chosen (ties go to the higher LR).

    LRs are compared on the same seeds: only seeds with a finished run at every LR of that method count (the
    others are named), unless no seed has them all, when each LR's mean uses its own seeds (said in the note)."""
    by = selected_by(runs)
    test = outcomes(runs, "acc_final")
    score = outcomes(runs, "acc_val_final" if by == BY_VALIDATION else "acc_final")
    chance = chance_percent(runs)
    chosen = []
    for ratio in ratio_order(runs):
        for method in methods:
            mine = (test.ratio == ratio) & (test.method == method)
            if not mine.any():
                continue
            seeds_by_lr = test[mine].groupby("lr").seed.apply(set)
            common = set.intersection(*seeds_by_lr)
            left_out = tuple(sorted(set.union(*seeds_by_lr) - common)) if common else ()
            if common:
                mine &= test.seed.isin(common)
            score_means = score[mine].groupby("lr").value.mean().sort_index(ascending=False)
            test_means = test[mine].groupby("lr").value.mean().sort_index(ascending=False)
            lr, oracle = float(score_means.idxmax()), float(test_means.idxmax())
            at = test[mine & (test.lr == lr)].set_index("seed").sort_index()
            swept = sorted(seeds_by_lr.index)
            edge = ""
            if len(swept) > 1 and lr == swept[-1]:
                edge = "highest LR swept for it"
            elif len(swept) > 1 and lr == swept[0]:
                edge = "lowest LR swept for it"
            if not common:
                edge = (edge + "; " if edge else "") + "no seed finished at every LR: LRs compared on different seeds"
            chosen.append(Selection(ratio, method, lr, Cell.of(at.value), float(score_means[lr]), oracle,
                                    float(test_means[oracle]), float(test_means[oracle] - test_means[lr]), edge,
                                    at.value, at.dense_id, by, left_out, chance if not math.isnan(chance) else 0.0))
    return chosen


@dataclass
class Comparison:
    """One method against its ratio's reference, each at its own selected LR, paired by seed."""

    ratio: str
    reference: str
    method: str
    test: PairedTest  # of (method - reference), points
    p_holm: float
    pairing: str
    seeds_needed: int | None  # pairs a difference of this size and spread needs to resolve after the correction
    assessed: bool = True  # False when the LRs (and so the reference) were chosen on the test set

    @property
    def resolved(self) -> bool:
        """Holm-adjusted p < ALPHA, and only when the LRs were chosen without the test set: a reference picked on
        test would be favoured by construction."""
        return self.assessed and not math.isnan(self.p_holm) and self.p_holm < ALPHA


def compare(selections: list[Selection]) -> list[Comparison]:
    """Per ratio, every method against the reference (the best *validation* accuracy at its selected LR: choosing
    it on test would favour it by construction; ties go to the higher test mean, then the report's method order),
    paired by seed, Holm-corrected across that ratio's comparisons."""
    out: list[Comparison] = []
    for ratio in dict.fromkeys(s.ratio for s in selections):
        here = [s for s in selections if s.ratio == ratio]
        if len(here) < 2:
            continue
        reference = max(here, key=lambda s: (s.score, s.acc.mean))
        others = [s for s in here if s is not reference]
        tested = against_reference(reference.per_seed, [o.per_seed for o in others], LEVEL)
        for other, (test, p_holm) in zip(others, tested):
            seeds = other.per_seed.index.intersection(reference.per_seed.index)
            shared = bool(len(seeds)) and bool((other.dense_ids[seeds] == reference.dense_ids[seeds]).all())
            pairing = "same seed, same dense model" if shared else "same seed only (own dense training)"
            # Bonferroni's level alpha/k is Holm's strictest step: a difference that clears it is resolved.
            needed = seeds_to_resolve(test.mean, test.sd, ALPHA / len(others))
            out.append(Comparison(ratio, reference.method, other.method, test, p_holm, pairing, needed,
                                  reference.by == BY_VALIDATION))
    return out


def winners(selections: list[Selection], comparisons: list[Comparison]) -> dict[str, str]:
    """Ratio -> the reference method, only where it beats every other method on test by a resolved paired
    difference (``stats.beats_every_other``'s rule: Holm, two or more pairs, LRs chosen on validation): the only
    case in which the report bolds a winner."""
    result = {}
    for ratio in dict.fromkeys(c.ratio for c in comparisons):
        mine = [c for c in comparisons if c.ratio == ratio]
        if all(c.resolved and c.test.n >= 2 and c.test.mean < 0 for c in mine):
            result[ratio] = mine[0].reference
    return result


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def verdict_table(selections: list[Selection], comparisons: list[Comparison], by: str) -> Table:
    """Per ratio and method: the selected LR, test accuracy there (mean ± CI), the oracle LR and the regret."""
    header = [(KEY, "ratio"), (KEY, "method"), ("selected LR", "lr"), ("selected LR", "test acc (%)"),
              ("best LR on test", "lr"), ("best LR on test", "test acc (%)"), (KEY, "regret (points)"),
              (KEY, "seeds"), (KEY, "note")]
    bold_methods = winners(selections, comparisons)
    expected = max((s.acc.n for s in selections), default=0)
    rows, data, bold = [], [], set()
    for s in selections:
        rows.append([s.ratio, s.method, f"{s.lr_selected:g}", s.acc.text(expected), f"{s.lr_oracle:g}",
                     _pct(s.acc_oracle), f"{s.regret:.2f}", str(s.acc.n),
                     s.notes])
        if bold_methods.get(s.ratio) == s.method:
            bold.add((len(rows) - 1, 3))
        data.append({"ratio": s.ratio, "method": s.method, "lr_selected": s.lr_selected, "acc": s.acc.mean,
                     "ci_half": s.acc.half, "lr_oracle": s.lr_oracle, "acc_oracle": s.acc_oracle,
                     "regret": s.regret, "selected_by": by, "seeds": s.acc.n, "selection_acc": s.score,
                     "edge_of_grid": s.edge,
                     "seeds_left_out": " ".join(str(seed) for seed in s.seeds_left_out),
                     "winner": bold_methods.get(s.ratio) == s.method})
    if by == BY_VALIDATION:
        how = ("Each method is retrained at the LR with the best mean *validation* accuracy over seeds (a split held "
               "out of the training set: dataset option `validation`), and scored on the test set there.")
    else:
        how = ("No validation split: the LR was chosen on the *test* set itself, which overstates every method "
               "(the regret is zero by construction and the accuracy is the best of several looks at the test "
               "set). Add `validation: N` to the dataset options for an honest choice.")
    failure = ("chance (100/classes)" if any(s.failure_at > 0 for s in selections) else
               "0% (the results do not say how many classes there are, so chance is unknown)")
    note = (f"{how} Test accuracy is the mean ± {LEVEL:.0%} t-interval over seeds; a diverged or failed run counts at "
            f"{failure}, in choosing the LR and in the mean. LRs are compared on the seeds that finished at every "
            "LR of the method (others are named in the note). 'Best LR on test' is the oracle's choice; "
            "the regret is what choosing without the test set cost, in points. A selected LR at either end of the "
            "LRs swept for the method may not be the best. Bold: a winner that beats every other method by a "
            "paired difference the test below resolves (never with one seed, never with LRs chosen on test).")
    return Table("verdict", f"Verdict: each method at its own retraining LR (selected on {by})", note, header, rows,
                 pd.DataFrame(data), bold)


def paired_table(comparisons: list[Comparison]) -> Table | None:
    """Every method against its ratio's reference: the mean paired test difference, its CI, p and Holm's p."""
    if not comparisons:
        return None
    header = [(KEY, "ratio"), (KEY, "reference"), (KEY, "method"), ("method − reference (points)", "mean ± CI"),
              (KEY, "pairs"), (KEY, "p"), (KEY, "p (Holm)"), (KEY, "resolved"), (KEY, "seeds to resolve"),
              (KEY, "pairing")]
    rows, data, bold = [], [], set()
    for c in comparisons:
        t = c.test
        diff = "—" if t.n == 0 else f"{t.mean:+.2f}" + (f" ± {t.half:.2f}" if t.n > 1 else "")
        if c.seeds_needed is None:
            needed = "—"
        elif c.resolved:
            needed = f"{t.n} (has them)"
        else:  # not resolved with these pairs, even if their count reached the estimate (a rounding edge)
            needed = str(max(c.seeds_needed, t.n + 1))
        rows.append([c.ratio, c.reference, c.method, diff, str(t.n), _p(t.p), _p(c.p_holm),
                     ("yes" if c.resolved else "no") if c.assessed else "not assessed (LRs chosen on test)",
                     needed, c.pairing])
        if c.resolved:
            bold.add((len(rows) - 1, 7))
        data.append({"ratio": c.ratio, "reference": c.reference, "method": c.method, "mean_diff": t.mean,
                     "ci_half": t.half, "pairs": t.n, "t": t.t, "p": t.p, "p_holm": c.p_holm,
                     "resolved": c.resolved, "assessed": c.assessed, "seeds_needed": c.seeds_needed,
                     "pairing": c.pairing})
    note = ("Per ratio, each method at its selected LR against the reference: the method with the best validation "
            "accuracy at its own selected LR (choosing the reference on test would favour it by construction). Seeds "
            "pair the runs: the same seed gives the same data order and, for methods sharing the common dense model, "
            "the same dense model; methods with their own dense training (e.g. rni, slimming, orthoreg's early-bird, "
            "scratch) pair by seed only, more weakly. Paired t-test on the per-seed test differences, two-sided; "
            f"p (Holm) corrects for the comparisons at that ratio; resolved = p (Holm) < {ALPHA:g}, assessed only when "
            "the LRs were chosen on a validation split. 'Seeds to resolve' is how many pairs a difference of this "
            f"mean and spread would need to clear {ALPHA:g}/k, k the comparisons at that ratio (Bonferroni, Holm's "
            "strictest step, so enough for Holm; with 3 seeds, 2 degrees of freedom, little resolves).")
    return Table("paired", "Paired comparisons against the best method", note, header, rows, pd.DataFrame(data), bold)


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ----------------------------------------------------------------------------------------- the headline

@dataclass
class Gap:
    """How far one method's mean test accuracy moves with the retraining LR at one ratio."""

    ratio: str
    method: str
    gap: float
    lr_best: float
    acc_best: float
    lr_worst: float
    acc_worst: float


def lr_gaps(runs: pd.DataFrame) -> list[Gap]:
    """Per ratio and method with two or more LRs: best minus worst mean test accuracy over the LRs (failures at
    chance)."""
    test = outcomes(runs, "acc_final")
    gaps = []
    for (ratio, method), group in test.groupby(["ratio", "method"], sort=False):
        means = group.groupby("lr").value.mean()
        if len(means) < 2:
            continue
        best, worst = means.idxmax(), means.idxmin()
        gaps.append(Gap(ratio, method, float(means[best] - means[worst]), float(best), float(means[best]),
                        float(worst), float(means[worst])))
    return gaps


def headline(runs: pd.DataFrame, selections: list[Selection], comparisons: list[Comparison]) -> list[str]:
    """A few sentences written from the numbers: the tuned winner per ratio and whether the seeds resolve it, how
    far accuracy moves with the LR (and who falls to chance), and whether the JSV after pruning predicts it."""
    by = selected_by(runs)
    lines = []
    for ratio in dict.fromkeys(s.ratio for s in selections):
        here = sorted((s for s in selections if s.ratio == ratio), key=lambda s: -s.acc.mean)
        mine = [c for c in comparisons if c.ratio == ratio]
        if len(here) < 2 or not mine:
            continue
        reference = next(s for s in here if s.method == mine[0].reference)
        # The lead stands only if every comparison resolves: speak of the least resolved one (highest Holm p).
        weakest = max(mine, key=lambda c: (c.p_holm if not math.isnan(c.p_holm) else math.inf, -abs(c.test.mean)))
        rival = next(s for s in here if s.method == weakest.method)
        margin = reference.acc.mean - rival.acc.mean
        seeds = reference.acc.n
        if not weakest.assessed:
            verdict = ("not assessed: with the LRs chosen on the test set the comparison would favour the leader "
                       f"(p Holm would be {_p(weakest.p_holm)})")
        elif weakest.resolved and ratio in winners(selections, comparisons):
            verdict = f"resolved against every method by these {seeds} seeds (largest p Holm {_p(weakest.p_holm)})"
        elif weakest.resolved:
            verdict = (f"{weakest.method} is ahead on test by a resolved margin (p Holm {_p(weakest.p_holm)}), so "
                       "the method chosen at selection does not win")
        elif seeds < 2:
            verdict = "not resolved: one seed allows no test"
        else:
            needed = (f"; a difference of this size would need about {weakest.seeds_needed} seeds"
                      if weakest.seeds_needed else "")
            verdict = f"not resolved by these {seeds} seeds (p Holm {_p(weakest.p_holm)}{needed})"
        chosen_on = "the validation split" if by == BY_VALIDATION else "the test set, optimistically"
        standing = (f"{abs(margin):.2f} points behind" if margin >= 0 else
                    f"{abs(margin):.2f} points ahead on test although behind at selection")
        lines.append(f"At ratio {ratio}, with each method retrained at its own LR (chosen on {chosen_on}), "
                     f"{reference.method} comes first with {reference.acc.mean:.2f}% test accuracy (LR "
                     f"{reference.lr_selected:g}); {rival.method} (LR {rival.lr_selected:g}) is {standing}: "
                     f"{verdict}.")
    gaps = lr_gaps(runs)
    if gaps and max(g.gap for g in gaps) < 0.005:
        lines.append("The retraining LR does not move any method's mean test accuracy here (gap: best minus worst "
                     "mean over its LRs).")
    elif gaps:
        top = max(gaps, key=lambda g: g.gap)
        per_method: dict[str, Gap] = {}
        for g in gaps:
            if g.method not in per_method or g.gap > per_method[g.method].gap:
                per_method[g.method] = g
        others = ", ".join(f"{g.method} {g.gap:.1f}" for g in sorted(per_method.values(), key=lambda g: -g.gap))
        lines.append(f"The retraining LR alone moves accuracy by up to {top.gap:.1f} points: {top.method} at ratio "
                     f"{top.ratio} ({top.acc_best:.2f}% at LR {top.lr_best:g}, {top.acc_worst:.2f}% at LR "
                     f"{top.lr_worst:g}). Largest gap per method, in points: {others}. (Gap here: a method's best "
                     "minus worst mean test accuracy over all its LRs, failed runs at chance; the learning-rate gap "
                     "table pairs a high with a low LR over the seeds that finished both.) The bias can "
                     "show as such a gap without any change of winner.")
    chance = chance_percent(runs)
    if not math.isnan(chance):
        test = outcomes(runs, "acc_final")
        means = test.groupby(["ratio", "method", "lr"], sort=False).value.mean()
        fallen = [f"{m} at ratio {r}, LR {lr:g} ({v:.1f}%)" for (r, m, lr), v in means.items()
                  if v <= chance + CHANCE_MARGIN]
        if fallen:
            lines.append(f"Fell to chance ({chance:.1f}%, within {CHANCE_MARGIN:g} points): " + "; ".join(fallen) + ".")
    rho, n = jsv_gap_correlation(runs, gaps)
    if n:
        if math.isnan(rho):
            lines.append(f"The JSV just after pruning cannot be set against the LR gap: {n} point(s) "
                         "(method × ratio) with both, too few or all alike.")
        else:
            reading = ("a low JSV goes with a large gap" if rho < -0.3 else
                       "a high JSV goes with a large gap" if rho > 0.3 else "no clear relation")
            lines.append(f"Does the JSV just after pruning predict the LR gap? Spearman ρ = {rho:+.2f} across {n} "
                         f"(method × ratio) points: {reading}" + (" (few points: read with care)." if n < 6 else "."))
    if by != BY_VALIDATION:
        lines.append("These LRs were chosen on the test set (no validation split), which overstates every method; "
                     "set `validation: N` in the dataset options.")
    return lines


def jsv_gap_correlation(runs: pd.DataFrame, gaps: list[Gap]) -> tuple[float, int]:
    """Spearman's ρ between the mean JSV just after pruning and the LR gap, over (method, ratio) points."""
    jsv = per_seed(runs, "jsv_pruned").groupby(["ratio", "method"]).jsv_pruned.mean()
    pairs = [(jsv[(g.ratio, g.method)], g.gap) for g in gaps if (g.ratio, g.method) in jsv.index]
    if not pairs:
        return math.nan, 0
    x, y = np.array(pairs).T
    return spearman_rho(x, y)
