"""Subcommand of the training stage: `span train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from span.settings.options import add_options, values_for
from span.settings.stages import TrainSettings


def _train(args: argparse.Namespace) -> None:
    import torch

    from span.training.augment import Augmentation
    from span.training.run import TrainingJob, run_training
    from span.training.trainer import TrainConfig

    torch.set_num_threads(args.threads)
    try:
        hparams = json.loads(args.hparams)
        augment = Augmentation(**values_for(Augmentation, args))
        config = TrainConfig(**values_for(TrainConfig, args), augment=augment)
    except json.JSONDecodeError as exc:
        args.parser.error(f"--hparams is not JSON: {exc}")
    except ValueError as exc:
        args.parser.error(str(exc))
    job = TrainingJob(
        splits=Path(args.splits),
        features_dir=Path(args.features_dir),
        classes=args.classes,
        model=args.model,
        out=Path(args.out),
        config=config,
        hparams=hparams,
        variant=args.variant or args.model,
        device=args.device,
        cache_mb=args.cache_mb,
        add_runtime_of=Path(args.add_runtime_of) if args.add_runtime_of else None,
    )
    run_training(job)


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span train`."""
    p = stages.add_parser(
        "train",
        help="train one model variant with one seed (early stopping on validation AUC)",
        description="AdamW with early stopping on validation AUC (ties: validation loss); "
        "writes checkpoint.pt (best state dict), history.csv, test_predictions.csv and "
        "metrics.json into --out.",
    )
    p.add_argument("--splits", required=True, help="splits.tsv from `span split`")
    p.add_argument("--features-dir", required=True, help="folder of <slide_id>.h5 features")
    p.add_argument("--classes", nargs="+", required=True, help="class names in order")
    p.add_argument("--model", required=True, help="registry name (see `span models`)")
    p.add_argument("--hparams", default="{}", help="JSON object of model hyperparameters")
    p.add_argument("--variant", help="name of this variant in reports (default: the model)")
    p.add_argument("--seed", type=int, default=0)
    add_options(p, TrainSettings)
    p.add_argument("--add-runtime-of", help="metrics.json whose runtime is added (MHIM teacher)")
    p.add_argument("--out", required=True, help="folder for this run's outputs")
    p.set_defaults(func=_train, parser=p)
