"""The paper's figures from tracked runs (seaborn; PNG and PDF).

Curves and points show the mean over seeds with the 95% Student-t interval of the mean
(:func:`analysis.aggregate.t_interval`) as a band or error bar; legends give n, the number of
runs behind each line. Every function returns a :class:`Figure` whose ``data`` is exactly the
table that was plotted (one row per run and point), or raises :class:`MissingData` when the
selection has nothing to draw.

Runs are never averaged across settings. Panels of Figs. 4, 7 and 9 are the groups of
:mod:`analysis.aggregate` (every key but the seed). Figs. 3 and 8 plot a parameter along an
axis, so their lines are "families": runs equal in everything but the seed, the variant name
and that parameter (training I for Fig. 3, L for Fig. 8); only families with at least two
values of it are drawn. Where two panels or lines share a name, the label adds what differs.

- Fig. 3 :func:`training_loss`: ``train/loss`` history by training I (``curriculum.refine_steps``).
- Fig. 4 :func:`kl_and_update_norms`: ``train/kl`` and ``train/update_norm_step{i}`` histories.
- Fig. 7 :func:`test_time_refinement`: ``eval/<set>/I<i>/{fg_ari,mse,kl}`` against test-time I,
  one line per test set (CLEVR10 with K = 11 is the set ``clevr10_K11``).
- Fig. 8 :func:`stochastic_layers`: ``test/fg_ari`` against L (``model.stochastic_layers``).
- Fig. 9c-d :func:`activeness_heatmaps`: the ``evaluation/<set>/activeness.npy`` artifacts.
- Figs. 5, 16-18 (decompositions) and 19-21 (latent traversals) :func:`run_figures`: the PNGs and
  arrays that ``emorl evaluate --figures`` logged in an evaluation run of the run (tag
  ``emorl.figures``), read by :func:`read_run_figures`; analysis never loads a checkpoint.
- Fig. 11 :func:`traversal_comparison`: those of several models side by side (EfficientMORL vs
  GENESIS vs GENESIS-S), each row with the share of its change that leaks outside the slot, drawn
  from each run's ``traversal_leakage.npz``.
"""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.aggregate import GROUP_KEYS, describe_differences, settings_except, t_interval  # noqa: E402
from analysis.collect import (download_artifact, list_artifacts, run_artifact_sources,  # noqa: E402
                              tracking_client)
from emorl import vocabulary  # noqa: E402
from emorl.errors import EmorlError  # noqa: E402

EVAL_KEY = re.compile(r"^eval/(?P<set>[^/]+)/I(?P<I>\d+)/(?P<metric>fg_ari|mse|kl)$")
UPDATE_NORM_KEY = re.compile(r"^train/update_norm_step(?P<i>\d+)$")
# Metric -> (axis label, scale) as the paper prints it.
UNITS = {"fg_ari": ("foreground ARI (%)", 100.0), "mse": ("MSE (x1e-4)", 1e4), "kl": ("KL (nats)", 1.0)}
ACTIVE_THRESHOLD = 0.01  # the same threshold `emorl evaluate` uses for activeness/<set>/active_dims


class MissingData(EmorlError):
    """The selected runs hold nothing this figure can draw."""


@dataclass
class Figure:
    """A written figure: its files, the data it plots, and what was drawn (read back from the axes:
    ``lines`` with panel, label, x, y; ``intervals`` with panel, label, x, low, high for bands and
    error bars)."""

    name: str
    paths: list[Path]
    data: pd.DataFrame = field(repr=False)
    caption: str = ""
    lines: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


def _wrap(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _styled(function):
    """Run a figure function under seaborn's whitegrid/paper style without changing global settings."""
    @functools.wraps(function)
    def styled(*args, **kwargs):
        rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.1)}
        with plt.rc_context(rc):
            return function(*args, **kwargs)

    return styled


def drawn(figure) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The curves and the interval artists (bands, error bars) of a figure, labelled through the legend
    entry of the same colour; used to check that a figure shows what it should."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import to_rgb

    lines, intervals = [], []
    for axis in figure.axes:
        legend = axis.get_legend()
        names = {}
        if legend is not None:
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                if hasattr(handle, "get_color"):
                    names[to_rgb(handle.get_color())] = text.get_text()
        panel = axis.get_title()
        for line in axis.get_lines():
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if len(x) and not line.get_label().startswith("_nolegend"):
                lines.append({"panel": panel, "label": names.get(to_rgb(line.get_color()), ""), "x": x, "y": y})
        for artist in axis.collections:
            if isinstance(artist, PolyCollection) and len(artist.get_paths()):
                colour = to_rgb(artist.get_facecolor()[0])
                vertices = artist.get_paths()[0].vertices
                for x in np.unique(vertices[:, 0]):
                    ys = vertices[vertices[:, 0] == x, 1]
                    intervals.append({"panel": panel, "label": names.get(colour, ""), "x": x, "low": ys.min(),
                                      "high": ys.max()})
            elif isinstance(artist, LineCollection):
                colour = to_rgb(artist.get_color()[0])
                for segment in map(np.asarray, artist.get_segments()):
                    if segment.ndim != 2 or not len(segment):
                        continue  # no interval drawn (a single run)
                    intervals.append({"panel": panel, "label": names.get(colour, ""), "x": segment[0, 0],
                                      "low": segment[:, 1].min(), "high": segment[:, 1].max()})
    return pd.DataFrame(lines), pd.DataFrame(intervals)


def _finish(figure, name: str, out_dir: str | Path, note: str | None, data: pd.DataFrame, caption: str) -> Figure:
    """Read back what was drawn, save PNG and PDF, close the figure."""
    lines, intervals = drawn(figure)
    return Figure(name, _save(figure, out_dir, name, note), data, caption, lines, intervals)


def _save(figure, out_dir: str | Path, name: str, note: str | None) -> list[Path]:
    if note:
        figure.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.35", style="italic")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    figure.savefig(paths[0], dpi=130, bbox_inches="tight")
    figure.savefig(paths[1], bbox_inches="tight")
    plt.close(figure)
    return paths


def _with_counts(frame: pd.DataFrame, line: str, label: str = "label") -> pd.DataFrame:
    """Add a ``label`` column: the line's name with the number of runs behind it, ``(n=N)``."""
    counts = frame.groupby(line, dropna=False)["run_id"].nunique()
    frame = frame.copy()
    frame[label] = [f"{value} (n={counts[value]})" for value in frame[line]]
    return frame


def _labels(runs: pd.DataFrame, keys: list[str], base: list[str], ignore_params: tuple[str, ...] = ()) -> pd.Series:
    """A name per run for its group (runs equal in ``keys``): the ``base`` columns joined by " / ",
    plus what differs from other groups of the same base name."""
    if runs.empty:
        return pd.Series("", index=runs.index, dtype=str)
    names = runs[base].astype(str).agg(" / ".join, axis=1)
    labels = pd.Series("", index=runs.index, dtype=str)
    for name in names.unique():
        same = runs[names == name]
        groups = [(dict(zip(keys, values)), frame) for values, frame in same.groupby(keys, dropna=False, sort=True)]
        texts = describe_differences(groups, tuple(keys), ignore_params)
        for (_, frame), text in zip(groups, texts):
            labels[frame.index] = name + (f" [{text}]" if text else "")
    return labels


def group_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, the name of its group (every key but the seed): ``experiment / variant`` (+ differences)."""
    return _labels(runs, list(GROUP_KEYS), ["experiment", "variant"])


def _labels_by_run(runs: pd.DataFrame) -> pd.Series:
    """Group names (:func:`group_labels`) of the runs drawn, indexed by run id."""
    return pd.Series(group_labels(runs).values, index=runs["run_id"].values)


def families(runs: pd.DataFrame, varied: tuple[str, ...], column: str) -> pd.DataFrame:
    """The runs of families (runs equal in everything but the seed, the variant and the ``varied``
    parameters) in which ``column`` takes at least two values, with ``family_label``
    (``experiment / model``, plus what differs between families of the same name)."""
    runs = runs[runs[column].notna()].assign(family_setting=settings_except(runs, varied))
    keys = ["experiment", "model", "dataset", "sweep", "family_setting"]
    runs = runs[runs.groupby(keys, dropna=False)[column].transform("nunique") >= 2]
    return runs.assign(family_label=_labels(runs, keys, ["experiment", "model"], varied))


def _int_param(runs: pd.DataFrame, name: str) -> pd.Series:
    column = f"params.{name}"
    if column not in runs.columns:
        return pd.Series(pd.NA, index=runs.index, dtype="Int64")
    return pd.to_numeric(runs[column], errors="coerce").astype("Int64")


def _panels(count: int, columns: int, width: float = 5.0, height: float = 3.6):
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, axes.flat


# -- Fig. 3 ------------------------------------------------------------------------------------------

@_styled
def training_loss(runs: pd.DataFrame, histories: pd.DataFrame, out_dir: str | Path, note: str | None = None,
                  key: str = "train/loss") -> Figure:
    """Fig. 3: training loss against step, one line per training I (mean, 95% band over seeds), one
    panel per family of runs that differ only in I (and seed)."""
    varied = ("curriculum.refine_steps", "curriculum.test_refine_steps", "curriculum.milestone_refine_steps",
              "model.refine_steps")
    with_history = runs[runs["run_id"].isin(histories.loc[histories["key"] == key, "run_id"])]
    runs = families(with_history.assign(I=_int_param(with_history, "curriculum.refine_steps")), varied, "I")
    if runs.empty:
        raise MissingData(f"Fig. 3 needs {key} histories of runs that differ only in training I "
                          "(curriculum.refine_steps) and seed")
    data = histories[histories["key"] == key].merge(runs[["run_id", "I", "family_label"]], on="run_id")
    data = data.assign(line="I = " + data["I"].astype(str))
    panels = sorted(data["family_label"].unique())
    figure, axes = _panels(len(panels), min(3, len(panels)))
    plotted = []
    for axis, panel in zip(axes, panels):
        part = _with_counts(data[data["family_label"] == panel], "line").sort_values(["line", "run_id", "step"])
        sns.lineplot(part, x="step", y="value", hue="label", estimator="mean", errorbar=t_interval, ax=axis)
        axis.set(title=_wrap(panel), xlabel="training step", ylabel=f"training loss ({key})")
        axis.legend(title="training I", fontsize=8, title_fontsize=8)
        plotted.append(part)
    figure.suptitle("Fig. 3: training loss for each training I, mean and 95% CI over seeds", fontsize=11)
    figure.tight_layout()
    return _finish(figure, "fig3_training_loss", out_dir, note, pd.concat(plotted),
                   "Fig. 3: training loss for each number of training refinement steps I.")


# -- Fig. 4 ------------------------------------------------------------------------------------------

@_styled
def kl_and_update_norms(runs: pd.DataFrame, histories: pd.DataFrame, out_dir: str | Path,
                        note: str | None = None) -> Figure:
    """Fig. 4: (a) ``train/kl`` and (b) the L2 norm of each refinement update, against step; one
    row of panels per group of runs."""
    norms = histories[histories["key"].str.match(UPDATE_NORM_KEY)]
    if norms.empty:
        raise MissingData("Fig. 4 needs train/update_norm_step{i} histories (EfficientMORL runs with I >= 1)")
    kl = histories[(histories["key"] == "train/kl") & histories["run_id"].isin(norms["run_id"])]
    labels = _labels_by_run(runs[runs["run_id"].isin(norms["run_id"])])
    data = pd.concat([kl, norms])
    data = data.assign(panel=data["run_id"].map(labels))
    panels = sorted(data["panel"].unique())
    figure, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    plotted = []
    for (kl_axis, norm_axis), panel in zip(axes, panels):
        part = data[data["panel"] == panel]
        kl_part = _with_counts(part[part["key"] == "train/kl"].assign(line="train/kl"), "line")
        if not kl_part.empty:
            sns.lineplot(kl_part, x="step", y="value", hue="label", estimator="mean", errorbar=t_interval,
                         ax=kl_axis)
            kl_axis.legend(fontsize=8)
        kl_axis.set(title=_wrap(f"(a) KL of the final step: {panel}"), xlabel="training step", ylabel="KL (nats)")
        norm_part = part[part["key"] != "train/kl"]
        norm_part = _with_counts(norm_part.assign(
            line="step i = " + norm_part["key"].str.extract(UPDATE_NORM_KEY)["i"]), "line")
        sns.lineplot(norm_part.sort_values(["line", "run_id", "step"]), x="step", y="value", hue="label",
                     estimator="mean", errorbar=t_interval, ax=norm_axis)
        norm_axis.set(title=_wrap(f"(b) L2 norm of refinement update: {panel}"), xlabel="training step",
                      ylabel=r"$\|\delta\lambda^{(L,i)}\|_2$")
        norm_axis.legend(title="refinement step", fontsize=8, title_fontsize=8)
        plotted += [kl_part, norm_part]
    figure.suptitle("Fig. 4: KL and refinement-update norms, mean and 95% CI over seeds", fontsize=11)
    figure.tight_layout()
    return _finish(figure, "fig4_kl_update_norms", out_dir, note, pd.concat(plotted),
                   "Fig. 4: (a) KL of the final refinement step, (b) L2 norm of each refinement update.")


# -- Fig. 7 ------------------------------------------------------------------------------------------

def test_time_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """The ``eval/<set>/I<i>/<metric>`` values of the runs in long form (values in the paper's units)."""
    rows = []
    for column in runs.columns:
        match = EVAL_KEY.match(column)
        if not match:
            continue
        label, scale = UNITS[match["metric"]]
        for _, run in runs[runs[column].notna()].iterrows():
            rows.append({"run_id": run["run_id"], "experiment": run["experiment"], "variant": run["variant"],
                         "seed": run["seed"], "set": match["set"], "I": int(match["I"]), "metric": match["metric"],
                         "unit": label, "raw": float(run[column]), "value": float(run[column]) * scale})
    columns = ["run_id", "experiment", "variant", "seed", "set", "I", "metric", "unit", "raw", "value"]
    return pd.DataFrame(rows, columns=columns)


def _set_name(name: str) -> str:
    """``clevr10_K11`` -> ``clevr10, K=11``; other set names unchanged."""
    match = re.fullmatch(r"(.+)_K(\d+)", name)
    return f"{match[1]}, K={match[2]}" if match else name


@_styled
def test_time_refinement(runs: pd.DataFrame, out_dir: str | Path, note: str | None = None) -> Figure:
    """Fig. 7: ARI, MSE and KL against test-time I (from ``emorl evaluate --refine-steps``), one
    line per test set, one row of panels per group of runs."""
    data = test_time_metrics(runs)
    if data.empty:
        raise MissingData("Fig. 7 needs eval/<set>/I<i>/... metrics (emorl evaluate --refine-steps 0,1,...)")
    labels = _labels_by_run(runs[runs["run_id"].isin(data["run_id"])])
    data = data.assign(panel=data["run_id"].map(labels), set=data["set"].map(_set_name))
    panels, metrics = sorted(data["panel"].unique()), [m for m in UNITS if m in set(data["metric"])]
    figure, axes = plt.subplots(len(panels), len(metrics), figsize=(4.6 * len(metrics), 3.6 * len(panels)),
                                squeeze=False)
    plotted = []
    for row, panel in zip(axes, panels):
        for axis, metric in zip(row, metrics):
            part = data[(data["panel"] == panel) & (data["metric"] == metric)]
            if part.empty:
                axis.set_visible(False)
                continue
            part = _with_counts(part, "set").sort_values(["label", "I", "run_id"])
            sns.lineplot(part, x="I", y="value", hue="label", marker="o", estimator="mean", errorbar=t_interval,
                         err_style="bars", ax=axis)
            axis.set(title=_wrap(f"{UNITS[metric][0]}: {panel}", 50), xlabel="test-time refinement steps I",
                     ylabel=UNITS[metric][0])
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.legend(title="test set (K)", fontsize=8, title_fontsize=8)
            plotted.append(part)
    figure.suptitle("Fig. 7: metrics against test-time I, mean and 95% CI over seeds", fontsize=11)
    figure.tight_layout()
    return _finish(figure, "fig7_test_time_refinement", out_dir, note, pd.concat(plotted),
                   "Fig. 7: ARI, MSE and KL against the number of test-time refinement steps.")


# -- Fig. 8 ------------------------------------------------------------------------------------------

@_styled
def stochastic_layers(runs: pd.DataFrame, out_dir: str | Path, note: str | None = None,
                      key: str = "test/fg_ari") -> Figure:
    """Fig. 8: final foreground ARI against the number of stochastic layers L, one line per family
    of runs that differ only in L (mean and 95% CI over seeds; each run as a dot)."""
    if key not in runs.columns:
        raise MissingData(f"Fig. 8 needs the {key} metric")
    scored = runs[runs[key].notna()]
    runs = families(scored.assign(L=_int_param(scored, "model.stochastic_layers")), ("model.stochastic_layers",), "L")
    if runs.empty:
        raise MissingData(f"Fig. 8 needs {key} of runs that differ only in L (model.stochastic_layers) and seed")
    data = runs.assign(L=runs["L"].astype(int), value=runs[key] * 100.0, line=runs["family_label"])
    data = _with_counts(data[["run_id", "experiment", "variant", "seed", "L", "value", "line"]], "line")
    data = data.sort_values(["label", "L", "run_id"])
    figure, axis = plt.subplots(figsize=(5.6, 3.8))
    sns.lineplot(data, x="L", y="value", hue="label", marker="o", estimator="mean", errorbar=t_interval,
                 err_style="bars", ax=axis)
    sns.scatterplot(data, x="L", y="value", hue="label", ax=axis, alpha=0.35, s=18, legend=False)
    axis.set(xlabel="stochastic layers L", ylabel="foreground ARI (%)",
             title="Fig. 8: ARI against L, mean and 95% CI over seeds (dots: runs)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, texts = axis.get_legend_handles_labels()
    axis.legend(handles, [_wrap(t, 60) for t in texts], title="runs", fontsize=8, title_fontsize=8,
                loc="upper left", bbox_to_anchor=(0, -0.18))
    figure.tight_layout()
    return _finish(figure, "fig8_stochastic_layers", out_dir, note, data,
                   "Fig. 8: foreground ARI against the number of stochastic layers L.")


# -- Fig. 9c-d ---------------------------------------------------------------------------------------

def activeness_matrices(runs: pd.DataFrame, tracking_uri: str | None) -> pd.DataFrame:
    """Each run's activeness artifacts: run_id, experiment, variant, model, dataset, seed, set,
    and ``matrix`` ([images, D] numpy array)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="emorl-activeness-") as download_dir:
        for _, run in runs.iterrows():
            rows += _run_activeness(run, tracking_uri, Path(download_dir))
    return pd.DataFrame(rows, columns=["run_id", "experiment", "variant", "model", "dataset", "seed", "set",
                                       "matrix"])


def _run_activeness(run: pd.Series, tracking_uri: str | None, download_dir: Path) -> list[dict]:
    """The activeness matrices of one run (and of its evaluation runs), one per test set."""
    identity = {k: run[k] for k in ("run_id", "experiment", "variant", "model", "dataset", "seed")}
    rows = []
    for source in run_artifact_sources(run):
        for folder in list_artifacts(source, "evaluation", tracking_uri):
            if f"{folder}/activeness.npy" not in list_artifacts(source, folder, tracking_uri):
                continue
            local = download_artifact(source, f"{folder}/activeness.npy", tracking_uri, download_dir / source)
            rows.append({**identity, "set": folder.split("/")[-1], "matrix": load_array_file(local)})
    return rows


@_styled
def activeness_heatmaps(runs: pd.DataFrame, tracking_uri: str | None, out_dir: str | Path,
                        note: str | None = None) -> Figure:
    """Fig. 9c-d: one heatmap per (model, variant, test set): rows are the test images of every
    seed stacked (seed blocks marked), columns the latent dimensions, colour the activeness (the
    image variance when that dimension of one slot is swept). One colour scale for all panels."""
    matrices = activeness_matrices(runs, tracking_uri)
    if matrices.empty:
        raise MissingData("Fig. 9c-d needs evaluation/<set>/activeness.npy artifacts (emorl evaluate --metrics "
                          "activeness)")
    labels = _labels_by_run(runs[runs["run_id"].isin(matrices["run_id"])])
    matrices = matrices.assign(panel=matrices["run_id"].map(labels) + " (" + matrices["model"] + "), test set "
                               + matrices["set"].map(_set_name))
    vmax = max(float(m.max()) for m in matrices["matrix"]) or 1.0
    panels = sorted(matrices["panel"].unique())
    figure, axes = _panels(len(panels), min(2, len(panels)), width=6.0, height=4.2)
    long = []
    for axis, panel in zip(axes, panels):
        part = matrices[matrices["panel"] == panel].sort_values(["seed", "run_id"])
        stacked = np.concatenate(list(part["matrix"]), axis=0)
        sns.heatmap(stacked, ax=axis, vmin=0.0, vmax=vmax, cmap="viridis", xticklabels=max(1, stacked.shape[1] // 8),
                    yticklabels=False, cbar_kws={"label": "activeness (image variance)"})
        bounds = np.cumsum([len(m) for m in part["matrix"]])
        for bound in bounds[:-1]:
            axis.axhline(bound, color="white", linewidth=1.0)
        axis.set_yticks(bounds - np.array([len(m) for m in part["matrix"]]) / 2)
        axis.set_yticklabels([f"seed {s}" for s in part["seed"]], rotation=0, fontsize=8)
        active = [int((m.mean(axis=0) > ACTIVE_THRESHOLD).sum()) for m in part["matrix"]]
        axis.set(xlabel="latent dimension", ylabel="test images, by seed",
                 title=_wrap(panel, 60) + f"\nactive dims per seed (> {ACTIVE_THRESHOLD:g}): {active} of "
                       f"{stacked.shape[1]}")
        for _, run in part.iterrows():
            for image, values in enumerate(run["matrix"]):
                long += [{"run_id": run["run_id"], "panel": panel, "seed": run["seed"], "image": image,
                          "dim": d, "value": float(v)} for d, v in enumerate(values)]
    figure.suptitle("Fig. 9c-d: activeness of latent dimensions", fontsize=11)
    figure.tight_layout()
    return _finish(figure, "fig9_activeness", out_dir, note, pd.DataFrame(long),
                   "Fig. 9c-d: activeness of each latent dimension (rows: test images of every seed).")


# -- Figs. 5, 16-21 and 11: read from the evaluation runs of `emorl evaluate --figures` ------------------

@dataclass
class RunFigures:
    """One run's decomposition and traversal as ``emorl evaluate --figures`` computed them, downloaded
    from its evaluation run: the PNGs and the arrays (``decomposition``, ``traversal``, ``leakage``:
    the npz files as dicts of numpy arrays)."""

    run: pd.Series = field(repr=False)
    evaluation_run: str
    decomposition_png: Path
    traversal_png: Path
    decomposition: dict = field(repr=False)
    traversal: dict = field(repr=False)
    leakage: dict = field(repr=False)


def figures_evaluation(run: pd.Series, tracking_uri: str | None) -> tuple[str, str] | None:
    """The latest evaluation run of ``run`` that holds figures (tag ``emorl.figures``, naming their
    artifact folder): (its run id, that folder), or None."""
    client = tracking_client(tracking_uri)
    found = []
    for source in run_artifact_sources(run):
        tagged = client.get_run(source)
        if tagged.data.tags.get(vocabulary.FIGURES):
            found.append((tagged.info.start_time or 0, source, tagged.data.tags[vocabulary.FIGURES]))
    return max(found)[1:] if found else None


def figures_command(run: pd.Series, tracking_uri: str | None) -> str:
    """The command that computes a run's figures: ``emorl evaluate <its output_dir tag>/checkpoints/last.pt
    --figures``."""
    output_dir = tracking_client(tracking_uri).get_run(run["run_id"]).data.tags.get(vocabulary.OUTPUT_DIR)
    return f"emorl evaluate {output_dir or '<run folder>'}/checkpoints/last.pt --figures"


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return load_array_file(path)


def load_array_file(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """An .npy array, or the arrays of an .npz file, downloaded from a tracking store, as data only:
    object arrays (pickles, which could run code) are refused with :class:`MissingData`."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except ValueError as error:  # "Object arrays cannot be loaded when allow_pickle=False", or not numpy
        raise MissingData(f"{path.name}: refused: not plain numeric arrays ({error}); an artifact written by emorl "
                          "holds numbers only, so this one was altered or not written by emorl") from None


def read_run_figures(run: pd.Series, tracking_uri: str | None, download_dir: str | Path) -> RunFigures:
    """Download what ``emorl evaluate --figures`` logged for ``run`` into ``download_dir``; raises
    :class:`MissingData` with the command that makes them when no evaluation run holds figures."""
    found = figures_evaluation(run, tracking_uri)
    if found is None:
        raise MissingData(f"no evaluation run with figures; make them with: {figures_command(run, tracking_uri)}")
    source, folder = found
    local = download_artifact(source, folder, tracking_uri, Path(download_dir) / source)
    return RunFigures(run, source, local / "decomposition.png", local / "traversal.png",
                      _arrays(local / "decomposition.npz"), _arrays(local / "traversal.npz"),
                      _arrays(local / "traversal_leakage.npz"))


def _run_title(run: pd.Series) -> str:
    return f"{run['experiment']} / {run['variant']} / seed {run['seed']} ({run['model']}, {run['dataset']})"


def run_figures(pictures: RunFigures, out_dir: str | Path) -> list[Figure]:
    """Figs. 5, 16-18 (decomposition of test images 0-7 at the setting's test I) and 19-21 (latent
    traversal) of one run: the PNGs of its evaluation placed in ``out_dir`` as
    ``decomposition_<run>.png`` and ``traversal_<run>.png``, with their data from the arrays."""
    run, out_dir = pictures.run, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    decomposition, traversal = pictures.decomposition, pictures.traversal
    data = pd.DataFrame({"image": decomposition["image_index"], "fg_ari": decomposition["fg_ari"],
                         "mse": decomposition["mse"]})
    caption = (f"Decomposition of {len(data)} test images at I = {int(decomposition['refine_steps'])}: "
               f"{_run_title(run)} (evaluation run {pictures.evaluation_run}).")
    dims = traversal["dims"].tolist()
    traversal_data = pd.DataFrame({"dim": range(len(traversal["low"])), "low": traversal["low"],
                                   "high": traversal["high"], "variance": traversal["variance"],
                                   "shown": [d in dims for d in range(len(traversal["low"]))],
                                   "slot": int(traversal["slot"])})
    for name, png, frame, text in (
            ("decomposition", pictures.decomposition_png, data, caption),
            ("traversal", pictures.traversal_png, traversal_data,
             f"Latent traversal of slot {int(traversal['slot'])}, test image 0: {_run_title(run)}.")):
        target = out_dir / f"{name}_{run['run_id'][:8]}.png"
        shutil.copyfile(png, target)
        made.append(Figure(target.stem, [target], frame, text))
    return made


def traversal_comparison(compared: list[RunFigures], out_dir: str | Path) -> Figure:
    """Fig. 11 (Appendix B.1): one row per run, the decoded scene of test image 0 and the traversal of
    one latent dimension of one slot (the first component of an ordered model, GENESIS, GENESIS-S,
    MONet; else the slot best matched to a true object; its most active dimension), with the *leak
    share* of each row: the part of the change outside the slot's pixels. Drawn from the
    ``traversal_leakage.npz`` arrays of each run's ``emorl evaluate --figures``."""
    from emorl.engine.figures import image_grid, value_titles

    if not compared:
        raise MissingData("Fig. 11 needs runs of two models or more with figures (emorl evaluate --figures)")
    rows, pictures, labels = [], [], []
    for item in compared:
        run, leak = item.run, item.leakage
        row = {"run_id": run["run_id"], "experiment": run["experiment"], "model": run["model"], "seed": run["seed"],
               **{key: leak[key].item() for key in ("slot", "slot_choice", "dim", "low", "high", "leak_share",
                                                    "mean_change")}}
        rows.append(row)
        pictures.append([leak["scene"], *leak["images"]])
        labels.append(f"{row['model']}, seed {row['seed']}\nslot {row['slot']}, z[{row['dim']}]\n"
                      f"leak {100 * row['leak_share']:.0f}%")
    name = "fig11_traversal_comparison"
    paths = image_grid(pictures, Path(out_dir) / f"{name}.png", labels,
                       ["decoded scene", *value_titles(len(pictures[0]) - 1)],
                       "Fig. 11: one latent dimension of one slot, traversed (test image 0); leak = share of the "
                       "change outside that slot's pixels", formats=("png", "pdf"))
    caption = ("Fig. 11: traversals of one slot per model; leak share " + ", ".join(
        f"{r['model']} {100 * r['leak_share']:.0f}%" for r in rows) + ".")
    return Figure(name, paths, pd.DataFrame(rows), caption)
