"""``emorl train``, ``emorl evaluate`` and ``emorl sync``."""

from __future__ import annotations

import argparse
import sys

from emorl.errors import ConfigError
from emorl.tracking import UNDELIVERED_EXIT_CODE


def _train(args: argparse.Namespace) -> int:
    from emorl.config import compose, default_tracking_uri
    from emorl.engine.train import train
    from emorl.tracking import tracking_note, undelivered

    cfg = compose(args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    result = train(cfg)
    print(f"\nrun folder: {result.output_dir}")
    print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    if cfg.tracking.backend != "none":
        uri = cfg.tracking.uri or default_tracking_uri()
        print(tracking_note(uri, result.output_dir, result.run_id, cfg.tracking.experiment))
        if undelivered(result.output_dir):
            return UNDELIVERED_EXIT_CODE
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,3; got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def _evaluate(args: argparse.Namespace) -> int:
    from emorl.engine.evaluation_run import run_evaluation

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - {"ari", "dci", "activeness"})
    if unknown:
        raise ConfigError(f"--metrics: unknown {unknown}; choose from ari, dci, activeness")
    run_evaluation(
        args.checkpoint, refine_steps=args.refine_steps, num_slots=args.num_slots, data=args.data,
        data_path=args.data_path, split=args.split, num_images=args.images, batch_size=args.batch_size,
        metrics=metrics, device=args.device, tracking_uri=args.tracking_uri, output_dir=args.output_dir,
        seed=args.seed, no_tracking=args.no_tracking, refine_objective=args.refine_objective,
    )
    return 0


def _sync(args: argparse.Namespace) -> int:
    from emorl.tracking import browse_command, deliver, spooled_run_dirs

    results = [deliver(folder, args.uri) for folder in spooled_run_dirs(args.run_dir)]
    for result in results:
        where = f"run {result.run_id}" if result.run_id else "run not created yet"
        line = f"{result.run_dir}: {where}, {result.delivered} of {result.pending} pending records delivered"
        print(line + (f", {result.left} left ({result.failure})" if result.left else ""))
    left = sum(r.left for r in results)
    print(f"total: {sum(r.delivered for r in results)} records delivered, {left} left, in {len(results)} "
          f"run folder{'s' if len(results) != 1 else ''}")
    if left:
        print(f"the tracking store did not take every record; when it is reachable, run again: emorl sync "
              f"{args.run_dir}", file=sys.stderr)
        return UNDELIVERED_EXIT_CODE
    for uri in sorted({r.uri for r in results}):
        print(f"look at it: {browse_command(uri)}")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train one run of a paper setting",
        description="Train one run. Overrides are Hydra-style, e.g. "
                    "`emorl train experiment=tetrominoes seed=3 trainer.max_steps=1000`. Experiments: "
                    "tetrominoes, multi_dsprites, clevr6, smoke (and the baselines').",
    )
    train.add_argument("overrides", nargs="*", help="key=value overrides, group=option choices")
    train.add_argument("--print-config", action="store_true", help="print the composed config and stop")
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint (ARI, MSE, KL at any test-time I; DCI; activeness)",
        description="Evaluate a checkpoint on a test set at several test-time refinement steps and log the "
                    "metrics in an MLflow run of its own, a child of the training run it evaluates.",
    )
    evaluate.add_argument("checkpoint", help="a checkpoint file (e.g. <run folder>/checkpoints/last.pt)")
    evaluate.add_argument("--refine-steps", type=_int_list, default=None,
                          help="test-time I, comma-separated (default: the setting's test I); Fig. 7: 0,1,2,3,4,5,6")
    evaluate.add_argument("--num-slots", type=int, default=None, help="K at test time (CLEVR10: 11)")
    evaluate.add_argument("--data", default=None, help="evaluate on another generated set, e.g. clevr10")
    evaluate.add_argument("--data-path", default=None, help="evaluate on this HDF5 file")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--images", type=int, default=320, help="number of test images (paper: 320)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--metrics", default="ari", help="comma-separated: ari (ARI, MSE, KL), dci, activeness")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--refine-objective", choices=("training", "elbo"), default=None,
                          help="the gradients fed to the refinement network: the training objective (GECO with "
                               "the checkpoint's zeta) or the plain ELBO; default: the run's evaluate.refine_objective")
    evaluate.add_argument("--output-dir", default=None,
                          help="the folder of the results and the tracking spool (default: <run folder>/evaluation/"
                               "<set>, or evaluation/<set> beside a checkpoint file outside a run folder)")
    evaluate.add_argument("--tracking-uri", default=None, help="default: the URI the run was trained with")
    evaluate.add_argument("--no-tracking", action="store_true", help="print only")
    evaluate.set_defaults(func=_evaluate)

    sync = subparsers.add_parser(
        "sync", help="deliver tracking records kept while the server was unreachable",
        description="Deliver the tracking records kept in the spool of a run folder, or of every run under a "
                    f"sweep folder. Exit codes: 0 everything delivered, 2 no spool there, {UNDELIVERED_EXIT_CODE} "
                    "records left undelivered (the store is still unreachable: run it again later).")
    sync.add_argument("run_dir", help="a run folder (holds tracking/spool.jsonl), or a sweep folder: every run "
                                      "under it")
    sync.add_argument("--uri", default=None, help="tracking URI (default: the one the run used)")
    sync.set_defaults(func=_sync)
