"""User-facing errors: one line that names the file, the reason and the fix."""

from __future__ import annotations

from pathlib import Path


class SpanError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without a traceback."""

    def __init__(self, path: str | Path | None, reason: str, fix: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}. Fix: {fix}")
