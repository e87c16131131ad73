"""Seeds -> statistics: group runs by every key except the seed, flag failed runs.

**Groups.** Runs are grouped by :data:`GROUP_KEYS` (the paper setting, variant, model, dataset,
sweep and the ``setting`` hash of all other parameters), so runs that differ in anything but
their seed are never averaged together. No seed is ever picked: every run of a group counts.

**Statistics** of a metric over the n runs of a group that have a finite value: the mean, the
sample standard deviation s (ddof = 1), n, and the 95% confidence interval of the mean from
Student's t distribution, ``mean +- t_{0.975, n-1} * s / sqrt(n)``. With n = 1 the standard
deviation and the interval are undefined (NaN); with n = 0 everything but n is NaN.

**Failed runs** (:func:`flag_runs`). A run is flagged, with the reason recorded, when

1. its MLflow status is not FINISHED (FAILED, KILLED, or still RUNNING);
2. it carries the ``emorl.failure`` tag (training stopped on a non-finite loss);
3. one of the aggregated metrics, or any ``test/...`` metric, ended non-finite (NaN or inf);
4. its decomposition collapsed: the final foreground ARI (``test/fg_ari``) is below
   ``collapse_ari`` (default 0.5; a model that puts every object in one slot scores about 0).

Every statistic is reported twice (column ``runs``): over ``all`` runs with a finite value, and
``without flagged`` runs, as the paper's Table 1 does for its failed Slot Attention run (93.3
with it, 98.3 without). That run scored about 73 (5 * 93.3 - 4 * 98.3), so the default threshold
would not flag it; pass a higher ``collapse_ari`` to treat such runs as failed.

**Differences to a reference** (:func:`compare`, for the ablation tables): the difference of
means, variant minus reference, over the seeds of each side, with

- Welch's t test (unequal variances): the 95% interval of the difference and the two-sided
  p-value (``scipy.stats.ttest_ind(equal_var=False)``); :func:`welch_from_summaries` does the same
  from published means, stds and n (the paper's numbers);
- a percentile bootstrap interval of the difference: each side's seeds resampled with
  replacement, independently, :data:`BOOTSTRAP_RESAMPLES` times, from a fixed random seed (the
  same runs give the same interval). With few seeds it is too narrow (a resample can only reuse
  the n values seen); read it beside Welch's, not instead of it;
- :func:`holm`: Holm's step-down correction of the p-values of one family of comparisons (one
  table), so that the chance of any false "significant" in the family stays at most 0.05.

A side with fewer than 2 finite values (or both sides without any spread) gives no interval and
no p-value, and the comparison says why; it is left out of the Holm family.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.collect import is_setting_param, setting_hash

GROUP_KEYS = ("experiment", "variant", "model", "dataset", "sweep", "setting")
ARI_KEY = "test/fg_ari"
COLLAPSE_ARI = 0.5
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
ALL_RUNS = "all"
WITHOUT_FLAGGED = "without flagged"


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof = 1), n and the 95% Student-t confidence interval of the mean."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


def finite_values(values) -> np.ndarray:
    """The finite numbers among ``values`` (anything else, None, NaN or inf, is left out)."""
    array = pd.to_numeric(pd.Series(values), errors="coerce").astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    return array[np.isfinite(array)]


def summarize(values) -> Summary:
    """Statistics of the finite values among ``values`` (see the module docstring)."""
    array = finite_values(values)
    n = len(array)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(array.mean())
    if n == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    std = float(array.std(ddof=1))
    half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half_width, mean + half_width)


def t_interval(values) -> tuple[float, float]:
    """(low, high) of the 95% Student-t interval of the mean (for seaborn's ``errorbar``)."""
    summary = summarize(values)
    return summary.ci_low, summary.ci_high


@dataclass(frozen=True)
class Comparison:
    """Variant minus reference: the difference of means, Welch's 95% interval and two-sided p-value,
    the percentile-bootstrap 95% interval, and n on each side. ``reason`` says why there is no
    interval (empty when there is one)."""

    difference: float
    n_variant: int
    n_reference: int
    welch_low: float = math.nan
    welch_high: float = math.nan
    p_value: float = math.nan
    bootstrap_low: float = math.nan
    bootstrap_high: float = math.nan
    reason: str = ""


def _untestable(n_variant: int, n_reference: int, spread: bool) -> str:
    if n_variant < 2 or n_reference < 2:
        return f"n = {n_variant} vs {n_reference}: an interval needs at least 2 seeds on each side"
    return "" if spread else "no spread: every seed on both sides gave the same value"


def _mean_difference(variant, reference, axis=-1):
    return np.mean(variant, axis=axis) - np.mean(reference, axis=axis)


def compare(variant, reference, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Comparison:
    """The difference of the finite values of ``variant`` and ``reference`` (see the module docstring)."""
    a, b = finite_values(variant), finite_values(reference)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    spread = len(a) > 1 and len(b) > 1 and (a.std(ddof=1) > 0 or b.std(ddof=1) > 0)
    reason = _untestable(len(a), len(b), spread)
    if reason:
        return Comparison(difference, len(a), len(b), reason=reason)
    with warnings.catch_warnings():  # one side without spread: scipy warns of precision loss, the result holds
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a, b, equal_var=False)
        interval = welch.confidence_interval(confidence)
        boot = stats.bootstrap((a, b), _mean_difference, n_resamples=resamples, confidence_level=confidence,
                               method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return Comparison(difference, len(a), len(b), float(interval.low), float(interval.high), float(welch.pvalue),
                      float(boot.confidence_interval.low), float(boot.confidence_interval.high))


def welch_from_summaries(mean_variant: float, std_variant: float, n_variant, mean_reference: float,
                         std_reference: float, n_reference, confidence: float = CONFIDENCE) -> Comparison:
    """Welch's comparison from published summaries (mean, std with ddof = 1, n); no bootstrap (no seeds)."""
    numbers = (mean_variant, std_variant, n_variant, mean_reference, std_reference, n_reference)
    if any(v is None or pd.isna(v) for v in numbers):
        n_a = 0 if pd.isna(n_variant) else int(n_variant)
        n_b = 0 if pd.isna(n_reference) else int(n_reference)
        return Comparison(float(mean_variant - mean_reference), n_a, n_b, reason="mean, std or n not published")
    n_a, n_b = int(n_variant), int(n_reference)
    difference = float(mean_variant - mean_reference)
    reason = _untestable(n_a, n_b, std_variant > 0 or std_reference > 0)
    if reason:
        return Comparison(difference, n_a, n_b, reason=reason)
    result = stats.ttest_ind_from_stats(mean_variant, std_variant, n_a, mean_reference, std_reference, n_b,
                                        equal_var=False)
    va, vb = std_variant ** 2 / n_a, std_reference ** 2 / n_b
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    return Comparison(difference, n_a, n_b, difference - half, difference + half, float(result.pvalue))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of one family of p-values (NaN: not tested, kept NaN and not counted).

    With the m tested p-values in increasing order p_(1) <= ... <= p_(m), the adjusted value of
    p_(i) is max over j <= i of min(1, (m - j + 1) * p_(j)); rejecting where it is <= alpha keeps
    the family-wise error rate at most alpha (Holm 1979). Ties keep their input order."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def _nonfinite(run: pd.Series) -> set[str]:
    return {k for k in str(run.get("nonfinite", "") or "").split(",") if k}


def flag_runs(runs: pd.DataFrame, metrics: tuple[str, ...] | list[str] = (), collapse_ari: float = COLLAPSE_ARI,
              ari_key: str = ARI_KEY) -> pd.DataFrame:
    """A copy of ``runs`` with ``flagged`` (bool) and ``flag_reason`` (``; ``-joined reasons)."""
    reasons = []
    for _, run in runs.iterrows():
        why = []
        if run.get("status", "FINISHED") != "FINISHED":
            why.append(f"status {run['status']}")
        if str(run.get("failure", "") or ""):
            why.append("stopped on a non-finite loss")
        bad = sorted(k for k in _nonfinite(run) if k in metrics or k.startswith("test/"))
        if bad:
            why.append("non-finite " + ", ".join(bad))
        ari = run.get(ari_key, math.nan)
        if ari is not None and not pd.isna(ari) and math.isfinite(ari) and ari < collapse_ari:
            why.append(f"collapsed: {ari_key} = {ari:.3g} < {collapse_ari:g}")
        reasons.append("; ".join(why))
    flagged = runs.copy()
    flagged["flag_reason"] = reasons
    flagged["flagged"] = flagged["flag_reason"] != ""
    return flagged


def _seeds(group: pd.DataFrame) -> str:
    return ",".join(str(s) for s in sorted(group["seed"].dropna().astype(int)))


def aggregate(runs: pd.DataFrame, metrics: list[str], by: tuple[str, ...] = GROUP_KEYS,
              collapse_ari: float = COLLAPSE_ARI) -> pd.DataFrame:
    """One row per (group, metric, runs in ``all`` / ``without flagged``): the group keys,
    ``metric``, ``runs``, ``mean``, ``std``, ``n``, ``ci95_low``, ``ci95_high``, ``n_runs`` (runs
    in the group), ``n_flagged`` (flagged runs in the group), ``seeds`` (of the counted runs).

    ``runs`` is a table from :func:`analysis.collect.collect_runs`; it is flagged with
    :func:`flag_runs` first unless it already has a ``flagged`` column. A metric missing from
    every run gives n = 0."""
    if "flagged" not in runs.columns:
        runs = flag_runs(runs, metrics, collapse_ari)
    rows = []
    keys = list(by)
    for group_values, group in runs.groupby(keys, dropna=False, sort=True):
        identity = dict(zip(keys, group_values if isinstance(group_values, tuple) else (group_values,)))
        for metric in metrics:
            values = group[metric] if metric in group.columns else pd.Series(math.nan, index=group.index)
            for subset, mask in ((ALL_RUNS, pd.Series(True, index=group.index)), (WITHOUT_FLAGGED, ~group["flagged"])):
                chosen = values[mask]
                counted = group[mask][np.isfinite(pd.to_numeric(chosen, errors="coerce").astype(float))]
                summary = summarize(chosen)
                rows.append({**identity, "metric": metric, "runs": subset, "mean": summary.mean, "std": summary.std,
                             "n": summary.n, "ci95_low": summary.ci_low, "ci95_high": summary.ci_high,
                             "n_runs": len(group), "n_flagged": int(group["flagged"].sum()),
                             "seeds": _seeds(counted)})
    columns = [*keys, "metric", "runs", "mean", "std", "n", "ci95_low", "ci95_high", "n_runs", "n_flagged", "seeds"]
    return pd.DataFrame(rows, columns=columns)


def settings_except(runs: pd.DataFrame, params: tuple[str, ...]) -> pd.Series:
    """Per run, the hash of its setting without the parameters ``params`` (for curves along them)."""
    columns = [c for c in runs.columns if c.startswith("params.")]
    hashes = []
    for _, run in runs[columns].iterrows():
        values = {c[len("params."):]: v for c, v in run.items() if isinstance(v, str)}
        hashes.append(setting_hash(values, params))
    return pd.Series(hashes, index=runs.index, dtype=str)


def describe_differences(groups: list[tuple[dict, pd.DataFrame]], keys: tuple[str, ...] = GROUP_KEYS,
                         ignore_params: tuple[str, ...] = (), max_params: int = 4) -> list[str]:
    """For each group of runs (its key values, its runs), a short text of what sets it apart from the
    other groups: the ``keys`` whose values differ, then the setting parameters whose values differ
    (``ignore_params`` aside); setting hashes are described by the parameters behind them. Empty
    texts when there is only one group."""
    if len(groups) < 2:
        return [""] * len(groups)
    shown = [k for k in keys if not k.endswith("setting") and len({str(g.get(k)) for g, _ in groups}) > 1]
    columns = sorted({c for _, frame in groups for c in frame.columns
                      if c.startswith("params.") and is_setting_param(c[len("params."):], ignore_params)})

    def values(frame: pd.DataFrame, column: str) -> tuple[str, ...]:
        return tuple(sorted(map(str, frame[column].dropna().unique()))) if column in frame else ()

    params = [c for c in columns if len({values(frame, c) for _, frame in groups}) > 1]
    texts = []
    for group, frame in groups:
        parts = [f"{k}={group.get(k)}" for k in shown]
        for column in params[:max_params]:
            found = values(frame, column)
            parts.append(f"{column[len('params.'):]}={found[0] if len(found) == 1 else list(found)}")
        texts.append(", ".join(parts) or f"setting {group.get('setting', '?')}")
    return texts
