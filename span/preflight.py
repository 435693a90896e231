"""`span check`: what the workflow checks before any job, in one process (one torch import):
the devices the config asks for, the encoder's weights and field (the patches must be the
tiles it was trained on, where that is published), and every experiment variant's model,
built on PyTorch's meta device (no memory) so that a wrong hyperparameter name or value stops
the run at start-up rather than in its training job, after patching and extraction."""

from __future__ import annotations

import json

from span.errors import SpanError


def check_devices(devices: dict[str, str]) -> None:
    """Each `key=device` the config asks for exists on this machine (one line naming the key)."""
    from span.device import resolve_device

    for key, device in devices.items():
        try:
            resolve_device(device)
        except SpanError as exc:
            reason = exc.reason.removeprefix("device ")
            raise SpanError(None, f"invalid config, {key}: {reason}", exc.fix) from None


def check_field(encoder: str, patch_size: int, target_mpp: float) -> None:
    """The patches are the field (tile side and um/px) the encoder's weights were trained on,
    where published: a resampled field is one line naming the keys to set."""
    from span.features.registry import ENCODERS, field_fix, field_problem

    info = ENCODERS.get(encoder)
    problem = field_problem(info, patch_size, target_mpp) if info else None
    if problem:
        raise SpanError(
            None, f"invalid config, patching.patch_size/target_mpp: {problem}", field_fix(info)
        )


def check_variants(checks: list[dict], in_dim: int, n_classes: int) -> None:
    """Build each model with its hyperparameters (`experiments.model_checks`) on the meta device;
    the first that fails is one line naming where it comes from."""
    import torch

    from span.models import build_model

    for check in checks:
        try:
            with torch.device("meta"):
                build_model(check["model"], in_dim, n_classes, **check["hparams"])
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:  # from the hparams
            raise SpanError(
                None,
                f"invalid config, {check['where']}: {exc}",
                "fix the variant in the experiments config (hyperparameters: docs/architecture.md)",
            ) from None


def run_checks(args) -> None:
    """`span check` with its parsed arguments."""
    check_devices(dict(pair.split("=", 1) for pair in args.device or []))
    if args.variants:
        check_variants(json.loads(args.variants), args.in_dim, args.n_classes)
    if args.encoder and args.patching:
        check_field(args.encoder, int(args.patching[0]), float(args.patching[1]))
    if args.encoder:
        from span.features.encoders import preflight

        try:
            preflight(args.encoder, args.layer, args.weights)
        except SpanError as exc:
            where = f"{exc.path}: " if exc.path else ""
            raise SpanError(
                None, f"invalid config, features.weights: {where}{exc.reason}", exc.fix
            ) from None


def register(stages) -> None:
    """Add `span check`."""
    c = stages.add_parser(
        "check",
        help="what the workflow checks before any job: devices, encoder weights and field, "
        "variants",
        description="Check that the devices exist here, that the encoder's weights can be had "
        "and fit, that the patches are the field its weights were trained on (where "
        "published), and that every variant's model builds with its hyperparameters (on the "
        "meta device: no memory, no compute). One line per problem, exit 1.",
    )
    c.add_argument(
        "--device", action="append", metavar="KEY=DEVICE", help="e.g. training.device=cuda:1"
    )
    c.add_argument("--encoder", help="features.encoder, to check its --weights")
    c.add_argument("--layer")
    c.add_argument("--weights")
    c.add_argument(
        "--patching",
        nargs=2,
        metavar=("PATCH_SIZE", "TARGET_MPP"),
        help="patching.patch_size and target_mpp of the slides to encode, to check the field",
    )
    c.add_argument("--variants", help="JSON list of {where, model, hparams} to build")
    c.add_argument("--in-dim", type=int, default=1024, help="feature width the variants get")
    c.add_argument("--n-classes", type=int, default=2)
    c.set_defaults(func=run_checks)
