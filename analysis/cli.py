"""``emorl report``: tables, figures and an index page from a selection of tracked runs."""

from __future__ import annotations

import argparse

from emorl.errors import EmorlError

RETIRED_OPTIONS = ("--data-path", "--device", "--traversal-images")  # now options of `emorl evaluate --figures`


def _selection(args: argparse.Namespace):
    from analysis.collect import RunSelection, parse_tag_filter

    run_ids = [r for text in args.run_ids or [] for r in text.replace(" ", "").split(",") if r]
    tags = dict(parse_tag_filter(text) for text in args.tag or [])
    selection = RunSelection(sweep=args.sweep, experiment=args.experiment, tags=tags, run_ids=run_ids)
    if not (selection.sweep or selection.experiment or selection.tags or selection.run_ids):
        raise EmorlError("say which runs to report: --sweep NAME, --experiment NAME (an MLflow experiment, e.g. "
                         "emorl), --tag key=value (e.g. variant=default) or --run-ids ID,ID")
    return selection


def _report(args: argparse.Namespace) -> int:
    from analysis.report import build_report

    if not 0.0 <= args.collapse_ari <= 1.0:
        raise EmorlError(f"--collapse-ari {args.collapse_ari}: expected a foreground ARI in [0, 1], e.g. 0.5")
    if args.max_checkpoint_groups < 0:
        raise EmorlError("--max-checkpoint-groups must be >= 0")
    for option in RETIRED_OPTIONS:
        if getattr(args, option.lstrip("-").replace("-", "_")) is not None:
            print(f"note: {option} is ignored: the report runs no model; decompositions and traversals come from "
                  "`emorl evaluate CHECKPOINT --figures` (which takes --device, --data-path, --traversal-images)")
    result = build_report(_selection(args), args.tracking_uri, args.out, collapse_ari=args.collapse_ari,
                          checkpoint_figures=not args.no_checkpoint_figures,
                          max_checkpoint_groups=args.max_checkpoint_groups, log=not args.no_log)
    flagged = int(result.runs["flagged"].sum())
    print(f"report of {len(result.runs)} runs ({flagged} flagged) written to {result.folder}")
    print(f"  open {result.folder / 'index.html'}")
    for name, reason in result.skipped.items():
        print(f"  not drawn: {name}: {reason}")
    if result.logged_to:
        print(f"  logged to MLflow run {result.logged_to} under report/")
    return 0


def register(subparsers) -> None:
    """Add ``emorl report`` to the ``emorl`` command."""
    parser = subparsers.add_parser(
        "report", help="tables 1-3, figures and an index page from tracked runs",
        description="Collect runs from MLflow (all criteria given must hold), write a report folder (Tables 1-3 "
                    "beside the paper's numbers as Markdown, LaTeX and CSV; Figs. 3, 4, 7, 8, 9c-d; decompositions "
                    "and latent traversals; index.html; README.md) and log it to MLflow. See docs/analysis.md.",
    )
    parser.add_argument("--sweep", help="runs tagged emorl.sweep=NAME")
    parser.add_argument("--experiment", help="runs of this MLflow experiment (tracking.experiment, default emorl)")
    parser.add_argument("--tag", action="append", metavar="KEY=VALUE",
                        help="runs with this tag (repeatable); experiment, variant, seed, model, dataset, sweep "
                             "mean the emorl.* tags")
    parser.add_argument("--run-ids", action="append", metavar="ID,ID", help="these runs (comma-separated)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under the output root)")
    parser.add_argument("--out", default=None, help="report folder (default: <output root>/reports/<selection>)")
    parser.add_argument("--collapse-ari", type=float, default=0.5,
                        help="flag runs whose final foreground ARI is below this as failed (default 0.5)")
    parser.add_argument("--max-checkpoint-groups", type=int, default=4,
                        help="show decompositions/traversals (from `emorl evaluate --figures`) of at most this many "
                             "groups (lowest seed of each)")
    parser.add_argument("--no-checkpoint-figures", action="store_true",
                        help="skip decompositions and traversals")
    for option in RETIRED_OPTIONS:  # accepted and ignored (with a note): the report runs no model any more
        parser.add_argument(option, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-log", action="store_true", help="write the folder only; log nothing to MLflow")
    parser.set_defaults(func=_report)
