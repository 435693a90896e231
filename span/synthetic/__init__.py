"""Synthetic data whose ground truth is known: spatial-task cohorts for the spatial benchmark."""

#: The spatial tasks, importable without numpy (command-line choices); `layouts.TASKS` has them.
TASK_NAMES = ("clumped", "interface", "distance")
