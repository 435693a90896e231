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


#: The stages in pipeline order: a module may import from its own stage and earlier ones only.
STAGES = ("slides", "features", "data", "models", "training", "evaluation", "inference")


def _span_imports(path: Path) -> set[str]:
    """The span modules a file imports at run time (not under `if TYPE_CHECKING:`)."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("span"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("span")}
    return found


def test_no_stage_imports_from_a_later_one():
    wrong = []
    for i, stage in enumerate(STAGES):
        for path in (REPO / "span" / stage).rglob("*.py"):
            for module in _span_imports(path):
                parts = module.split(".")
                if len(parts) > 1 and parts[1] in STAGES[i + 1 :]:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, wrong


def test_shared_modules_import_no_stage():
    """The metrics and the run files are read by training, evaluation, inference, benchmarks
    and tests: they belong to no stage."""
    for name in ("metrics.py", "run_files.py", "outputs.py", "batches.py"):
        stages = {m.split(".")[1] for m in _span_imports(REPO / "span" / name) if m.count(".")}
        assert not stages & set(STAGES), (name, stages)
