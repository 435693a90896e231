"""Synthetic data whose ground truth is known: the demo cohort's slides and the spatial
benchmark's tasks. The names and their command-line parsing are here, importable without numpy;
the generators are in submodules: `tissue` (H&E-like slides with their masks), `demo`,
`large_slide`, `layouts` and `feature_cohort`, all drawing their smooth noise from `noise`;
`spatial_benchmark` is benchmarks/bench_spatial.py's logic."""

from __future__ import annotations

import argparse

#: The spatial tasks, importable without numpy (command-line choices); `layouts.TASKS` has them.
TASK_NAMES = ("clumped", "interface", "distance")

#: Classes of the demo cohort, in slide order: the same share of tumour-like patch cells,
#: scattered one by one or in compact clumps, so that only their arrangement tells them apart.
DEMO_CLASSES = ("scattered", "clumped")
#: What a demo slide can show: no tumour, tumour islands, or tumour cells arranged as in a
#: demo class (`span demo-slide --label`).
DEMO_LABELS = ("normal", "tumor", *DEMO_CLASSES)
#: Slides in the demo cohort.
DEMO_SLIDES = 64

#: The spatial cohorts' easiest level of patch accuracy: every patch's type told without error.
CERTAIN = "certain"


def check_patch_accuracy(value: float | None) -> float | None:
    """`value` if it is a patch accuracy, between 0.5 (a guess) and 1 (None: certain)."""
    if value is not None and not 0.5 < value < 1:
        raise ValueError(f"a patch accuracy lies between 0.5 and 1 (or is {CERTAIN}), not {value}")
    return value


def patch_level(text: str) -> float | None:
    """A patch accuracy on the command line: a number, or `certain` (None; 1 means the same)."""
    try:
        value = None if text == CERTAIN else float(text)
        return check_patch_accuracy(None if value == 1 else value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def level_name(accuracy: float | None) -> str:
    """A patch accuracy as folder names and tables show it: `0.9`, or `certain`."""
    return CERTAIN if accuracy is None else f"{accuracy:g}"
