"""Synthetic data whose ground truth is known: the demo cohort's slides and the spatial
benchmark's tasks. The names are here, importable without numpy (command-line choices); the
generators are in submodules: `tissue` (H&E-like slides with their masks), `demo`,
`large_slide`, `layouts` and `feature_cohort`, all drawing their smooth noise from `noise`."""

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
