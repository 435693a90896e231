"""The documentation stays in line with the code: every module has a row in
docs/architecture.md and every row names a module that exists; the README stays a short guide
whose links resolve."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"


def documented_modules() -> set[str]:
    """Modules named in architecture.md's tables: `span/...` paths (a folder covers what is in
    it), and the Models table's file names (in span/models/)."""
    rows = re.findall(r"^\| `([^`]+)` \|", ARCHITECTURE.read_text(), re.MULTILINE)
    return {
        r if r.startswith("span/") else f"span/models/{r}"
        for r in rows
        if "/" in r or r.endswith(".py")
    }


def test_every_module_has_a_row_and_every_row_a_module():
    documented = documented_modules()
    folders = {d for d in documented if d.endswith("/")}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "span").rglob("*.py")}
    undocumented = {
        m
        for m in modules
        if m not in documented
        and not any(m.startswith(f) for f in folders)
        and Path(m).name
        not in ("__init__.py", "__main__.py", "cli.py")  # cli.py: span/cli.py's row
    }
    assert not undocumented, f"add a row to docs/architecture.md for {sorted(undocumented)}"
    gone = {d for d in documented if not (REPO / d).exists()}
    assert not gone, f"docs/architecture.md names modules that do not exist: {sorted(gone)}"


def test_readme_is_a_short_guide_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), target
    assert not re.search(r"\b[0-9a-f]{7}\b", text), "no commit hashes in the user guide"
