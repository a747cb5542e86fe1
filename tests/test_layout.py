"""The package's shape: stages in folders, one orchestrator per stage as the only
reader and writer of tables, and the architecture page in step with the config."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import CONF, ROOT

LIB = ROOT / "lib" / "custseg"
STAGES = ("ingest", "features", "segment", "insights", "serve")
# custseg.io's functions that read or write a table; its types, errors and path helpers
# (TableRef, table_ref, resolve, PrerequisiteError) may be used anywhere.
TABLE_ACCESS = {
    "read", "read_required", "exists", "overwrite", "append", "insert_new", "merge", "upsert", "delete_matching",
    "retried_on_conflict", "commits_tagged", "commit_tags",
}  # fmt: skip
# The notebooks' helper shows any table the notebook names: an entry point, as jobs/ are.
ENTRY_POINTS = {"notebook.py"}


def table_access(path: Path) -> list[str]:
    """The calls of custseg.io's table functions in the module at ``path``."""
    tree = ast.parse(path.read_text())
    aliases = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "custseg":
            aliases |= {a.asname or a.name for a in node.names if a.name == "io"}
        elif isinstance(node, ast.ImportFrom) and node.module == "custseg.io":
            found += [f"imports io.{a.name}" for a in node.names if a.name in TABLE_ACCESS]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr in TABLE_ACCESS
        ):
            found.append(f"line {node.lineno}: io.{node.attr}")
    return found


def test_only_the_stage_orchestrators_read_or_write_tables():
    callers = {
        str(path.relative_to(LIB)): table_access(path)
        for path in sorted(LIB.rglob("*.py"))
        if path.name != "io.py" and str(path.relative_to(LIB)) not in ENTRY_POINTS
    }
    outside = {name: calls for name, calls in callers.items() if calls and not name.endswith("/job.py")}
    assert outside == {}
    # and each stage has its orchestrator, which does read or write
    assert all(callers[f"{stage}/job.py"] for stage in STAGES)


def test_table_access_finds_both_forms(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from custseg import io\nfrom custseg.io import append, TableRef\nio.read(s, r)\nio.table_ref(x, y)\n"
    )
    assert table_access(module) == ["imports io.append", "line 3: io.read"]


def test_every_stage_folder_says_what_it_is_for():
    for folder in sorted(p for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) <= 2, folder.name


def test_no_module_of_lib_holds_two_ideas_by_its_size():
    long = {str(p.relative_to(LIB)): n for p in LIB.rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert long == {}


def test_architecture_page_has_a_row_for_every_table_of_the_config():
    tables = yaml.safe_load((CONF / "base.yaml").read_text())["tables"]
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\|\s*`?(\w+)`?", page, flags=re.M))
    assert set(tables) - rows == set()
