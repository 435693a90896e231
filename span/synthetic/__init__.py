"""Synthetic data whose ground truth is known: the demo cohort's classes and the spatial
benchmark's tasks (names here, importable without numpy; the generators in submodules)."""

#: The spatial tasks, importable without numpy (command-line choices); `layouts.TASKS` has them.
TASK_NAMES = ("clumped", "interface", "distance")

#: Classes of the demo cohort, in slide order: tumour-like nests scattered one patch cell at a
#: time, or the same share of tissue in 1-2 compact foci. Only the arrangement tells them
#: apart, which permutation-invariant MIL cannot see.
DEMO_CLASSES = ("scattered", "clumped")
#: Slides in the demo cohort (24 per class).
DEMO_SLIDES = 48
