"""Names of the registered models, importable without torch (the Snakefile checks the
experiments config against it at start-up; a test keeps it equal to the registry)."""

MODEL_NAMES = ("span", "abmil", "clam_sb", "clam_mb", "dtfd", "mhim", "transmil")
