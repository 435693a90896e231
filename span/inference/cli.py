"""Subcommand of the inference stage: `span predict`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from span.settings.options import add_options
from span.settings.stages import PredictSettings, TrainSettings


def _predict(args: argparse.Namespace) -> None:
    from span.inference.predict import PredictionJob, run_prediction

    job = PredictionJob(
        samples=Path(args.samples),
        classes=args.classes,
        features_dir=Path(args.features_dir),
        model=args.model,
        runs=[Path(d) for d in args.runs],
        out=Path(args.out),
        hparams=json.loads(args.hparams),
        variant=args.variant or args.model,
        heatmaps=Path(args.heatmaps) if args.heatmaps else None,
        heatmap_max_side=args.heatmap_max_side,
        heatmap_scores=args.heatmap_scores,
        heatmap_top_k=args.heatmap_top_k,
        qc=Path(args.qc) if args.qc else None,
        device=args.device,
        cache_mb=args.cache_mb,
    )
    run_prediction(job)


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span predict`."""
    p = stages.add_parser(
        "predict", help="probabilities per seed and averaged for every slide, and heatmaps"
    )
    p.add_argument("--samples", required=True, help="sample sheet (all its slides are predicted)")
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--features-dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--variant", help="the variant's name in heatmap titles (default: the model)")
    p.add_argument("--hparams", default="{}", help="JSON object of model hyperparameters")
    p.add_argument("--runs", nargs="+", required=True, help="seed folders with checkpoint.pt")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.add_argument(
        "--heatmaps",
        help="folder for each slide's heatmap PNG, scores GeoJSON and HDF5 (optional)",
    )
    add_options(p, PredictSettings)
    add_options(p, TrainSettings, ("device", "cache_mb"))
    p.add_argument("--qc", help="qc/summary.tsv: its excluded slides are not predicted")
    p.set_defaults(func=_predict)
