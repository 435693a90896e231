"""span-wsi: whole-slide images to slide-level predictions with SPAN and MIL baselines.

Kept free of heavy imports: the Snakefile imports `span.data.samplesheet` at parse time.
"""

__version__ = "0.1.0"
