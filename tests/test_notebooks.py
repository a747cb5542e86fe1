"""The Databricks-style notebooks: their format, their Databricks branch, and all three
executed in order on the demo data as plain Python."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from custseg.notebook import Notebook
from tests.conftest import CONF, TEST_SETTINGS

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.py"))
SEPARATOR = "# COMMAND ----------"


def test_the_three_notebooks_are_in_databricks_source_format():
    assert [p.name for p in NOTEBOOKS] == ["01_explore.py", "02_segment.py", "03_insights.py"]
    for path in NOTEBOOKS:
        text = path.read_text()
        assert text.startswith("# Databricks notebook source\n"), path.name
        cells = text.split(f"\n{SEPARATOR}\n")
        assert len(cells) >= 4, path.name
        for cell in cells:
            lines = [line for line in cell.strip().splitlines() if line != "# Databricks notebook source"]
            # a markdown cell is MAGIC lines only; a code cell has none
            magic = [line.startswith("# MAGIC") for line in lines]
            assert all(magic) or not any(magic), f"{path.name}: a cell mixes MAGIC and code"
            if all(magic) and lines:
                assert lines[0] == "# MAGIC %md", f"{path.name}: markdown cell without %md"


class Widgets:
    """Databricks' dbutils.widgets as a notebook sees it: text() declares, get() reads."""

    def __init__(self, set_by_user: dict[str, str]):
        self.declared: dict[str, str] = {}
        self.set_by_user = set_by_user

    def text(self, name: str, default: str) -> None:
        self.declared[name] = default

    def get(self, name: str) -> str:
        return self.set_by_user.get(name, self.declared[name])


class DbUtils:
    def __init__(self, widgets: Widgets):
        self.widgets = widgets


def test_on_databricks_parameters_are_widgets_and_output_goes_to_display(spark, tmp_path):
    widgets = Widgets({"overrides": ";".join([*TEST_SETTINGS, f"storage.root={tmp_path}"])})
    shown, html = [], []
    namespace = {"dbutils": DbUtils(widgets), "display": shown.append, "displayHTML": html.append}
    nb = Notebook(namespace, {"generate_demo_data": "true"})
    assert set(widgets.declared) == {"configs", "overrides", "plots_dir", "generate_demo_data"}
    assert nb.params["generate_demo_data"] == "true" and nb.cfg.storage.root == str(tmp_path)
    table = spark.createDataFrame([(1,)], "x INT")
    nb.show(table)
    assert shown == [table]
    assert nb.plot("p", b"\x89PNG") is None and html == ['<img alt="p" src="data:image/png;base64,iVBORw=="/>']


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo sources' relative paths land here
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    overrides = [*TEST_SETTINGS, f"ingest.sources={sources}", "demo.customers=300", "segment.k_max=4",
                 "stability.seeds=[7]", "stability.bootstrap=0", "report.tsne=false"]  # fmt: skip
    monkeypatch.setenv("CUSTSEG_CONFIGS", f"{CONF / 'base.yaml'},{CONF / 'local.yaml'}")
    monkeypatch.setenv("CUSTSEG_OVERRIDES", ";".join(overrides))
    monkeypatch.setenv("CUSTSEG_PLOTS_DIR", str(tmp_path / "plots"))
    return tmp_path


def test_notebooks_run_in_order_on_the_demo_data(spark, notebook_env):
    plots = notebook_env / "plots"
    expected_plots = {
        "01_explore.py": {"monthly_activity", "feature_distributions", "rfm_grid"},
        "02_segment.py": {"k_sweep"},
        "03_insights.py": {"segment_profiles", "segment_sizes"},
    }
    seen: set[str] = set()
    for path in NOTEBOOKS:
        namespace = runpy.run_path(str(path), run_name="__main__")
        seen |= expected_plots[path.name]
        assert {p.stem for p in plots.glob("*.png")} == seen, path.name
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots.glob("*.png"))
    # 02 fitted and chose k from the sweep; 03 profiled those labels and wrote the report
    lake = notebook_env / "data" / "lake"
    labels = spark.read.format("delta").load(str(lake / "segment_labels"))
    assert labels.count() == spark.read.format("delta").load(str(lake / "customer_features")).count()
    report = Path(namespace["result"].path)
    assert report.is_file() and "k sweep" in report.read_text().lower()
