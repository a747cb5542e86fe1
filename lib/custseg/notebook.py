"""What the notebooks in ``notebooks/`` share: parameters, the session, and showing
tables and plots the same way on Databricks and in a plain ``python`` run.

On Databricks the notebook's namespace holds ``dbutils``, ``display`` and
``displayHTML``: parameters become widgets, tables go to ``display`` and plots to
``displayHTML``. Run locally (``python notebooks/01_explore.py``), parameters come from
``CUSTSEG_<NAME>`` environment variables, tables print (at most ``rows`` rows) and plots
are written as PNG files whose paths print.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from custseg import io
from custseg.config import Config, load_config
from custseg.spark import get_spark

COMMON = {
    "configs": "conf/base.yaml,conf/local.yaml",  # comma-separated, later files win
    "overrides": "",  # key=value pairs separated by ';', as --set takes them
    "plots_dir": "reports/notebooks",  # where a local run writes its plots
}


class Notebook:
    def __init__(self, namespace: Mapping[str, Any], defaults: Mapping[str, str] | None = None, rows: int = 20):
        self.ns = namespace
        self.rows = rows
        self.params = self._parameters({**COMMON, **(defaults or {})})
        self.cfg: Config = load_config(
            [p.strip() for p in self.params["configs"].split(",") if p.strip()],
            [o.strip() for o in self.params["overrides"].split(";") if o.strip()],
        )
        self.spark: SparkSession = get_spark(self.cfg.spark)

    @property
    def on_databricks(self) -> bool:
        return "dbutils" in self.ns

    def _parameters(self, defaults: Mapping[str, str]) -> dict[str, str]:
        if not self.on_databricks:
            return {key: os.environ.get(f"CUSTSEG_{key.upper()}", value) for key, value in defaults.items()}
        widgets = self.ns["dbutils"].widgets
        for key, value in defaults.items():
            widgets.text(key, value)
        return {key: widgets.get(key) for key in defaults}

    def table(self, name: str) -> DataFrame:
        """A table of this project by its config key, e.g. ``nb.table("k_sweep")``."""
        return io.read(self.spark, io.table_ref(self.cfg.storage, getattr(self.cfg.tables, name)))

    def show(self, data: DataFrame | pd.DataFrame, title: str = "") -> None:
        if title:
            print(f"\n{title}")
        if self.on_databricks:
            self.ns["display"](data)
        elif isinstance(data, pd.DataFrame):
            print(data.head(self.rows).to_string(index=False))
        else:
            data.show(self.rows, truncate=False)

    def plot(self, name: str, png: bytes) -> str | None:
        """Show a plot: inline on Databricks, else as ``<plots_dir>/<name>.png``."""
        if self.on_databricks:
            encoded = base64.b64encode(png).decode("ascii")
            self.ns["displayHTML"](f'<img alt="{name}" src="data:image/png;base64,{encoded}"/>')
            return None
        path = Path(self.params["plots_dir"]) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        print(f"plot {name}: {path}")
        return str(path)
