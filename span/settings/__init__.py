"""Every option of the config, declared once (`stages.py`) with the means to use it
(`options.py`)."""
