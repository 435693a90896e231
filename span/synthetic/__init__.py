"""Synthetic data whose ground truth is known: the demo cohort's classes and the spatial
benchmark's tasks (names here, importable without numpy; the generators in submodules)."""

#: The spatial tasks, importable without numpy (command-line choices); `layouts.TASKS` has them.
TASK_NAMES = ("clumped", "interface", "distance")

#: Classes of the demo cohort, in slide order: no tumour, or tumour-like islands.
DEMO_CLASSES = ("normal", "tumor")
#: Slides in the demo cohort.
DEMO_SLIDES = 16
