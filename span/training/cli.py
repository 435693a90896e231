"""Subcommand of the training stage: `span train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _train(args: argparse.Namespace) -> None:
    import torch

    from span.training.augment import Augmentation
    from span.training.run import run_training
    from span.training.trainer import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        hparams = json.loads(args.hparams)
        config = TrainConfig(
            epochs=args.epochs,
            patience=args.patience,
            min_epochs=args.min_epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            class_weighted=args.class_weighted,
            cosine=args.cosine,
            warmup_epochs=args.warmup_epochs,
            standardize=args.standardize,
            augment=Augmentation(args.flips, args.translate, args.patch_drop),
            seed=args.seed,
        )
    except json.JSONDecodeError as exc:
        args.parser.error(f"--hparams is not JSON: {exc}")
    except ValueError as exc:
        args.parser.error(str(exc))
    run_training(
        Path(args.splits),
        Path(args.features_dir),
        args.classes,
        args.model,
        hparams,
        args.variant or args.model,
        config,
        Path(args.out),
        args.device,
        Path(args.add_runtime_of) if args.add_runtime_of else None,
    )


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
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument(
        "--min-epochs", type=int, default=0, help="no early stop before this epoch (default 0)"
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--class-weighted", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.0,
        help="linear learning-rate warm-up over this many epochs (per step)",
    )
    p.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="augment: one of the 8 rotations/reflections of the grid per step",
    )
    p.add_argument(
        "--translate",
        type=int,
        default=8,
        help="augment: shift the grid by 0..N-1 cells per axis per step (0 = off)",
    )
    p.add_argument(
        "--patch-drop",
        type=float,
        default=0.0,
        help="augment: share of a slide's patches left out per step",
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="z-score every feature dimension with the training slides' mean and std",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--add-runtime-of", help="metrics.json whose runtime is added (MHIM teacher)")
    p.add_argument("--out", required=True, help="folder for this run's outputs")
    p.set_defaults(func=_train, parser=p)
