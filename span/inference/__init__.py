"""The inference stage: class probabilities of every slide with a variant's checkpoints, and
heatmaps of its patch scores (`span predict`)."""
