# Databricks notebook source
# MAGIC %md
# MAGIC # Segment customers
# MAGIC Runs the whole custseg pipeline (ingest, features, segment) through the same
# MAGIC library functions as the `spark-submit` jobs, then shows the k sweep and the segments.
# MAGIC On Databricks the parameters come from widgets; run locally with
# MAGIC `.venv/bin/python notebooks/segment_customers.py` from the project root.

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. Parameters
# MAGIC The config files to layer and any `key=value` overrides, exactly as the jobs take them.

# COMMAND ----------

import os

DEFAULTS = {
    "configs": "conf/base.yaml,conf/local.yaml",
    "overrides": "",
    "generate_demo_data": "true",
}


def parameters() -> dict[str, str]:
    try:
        dbutils  # noqa: B018 - defined on Databricks only
    except NameError:
        return {k: os.environ.get(f"CUSTSEG_{k.upper()}", v) for k, v in DEFAULTS.items()}
    for key, value in DEFAULTS.items():
        dbutils.widgets.text(key, value)  # noqa: F821
    return {key: dbutils.widgets.get(key) for key in DEFAULTS}  # noqa: F821


params = parameters()
params  # noqa: B018 - a notebook shows the last expression of a cell

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Configuration and session
# MAGIC The same loader and session factory as the jobs: validated config, Delta configured.

# COMMAND ----------

from custseg import cli, io  # noqa: E402
from custseg.config import load_config  # noqa: E402
from custseg.spark import get_spark  # noqa: E402

cfg = load_config([p for p in params["configs"].split(",") if p], [o for o in params["overrides"].split(";") if o])
spark = get_spark(cfg.spark)
run_id = cli.new_run_id()

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Run the pipeline
# MAGIC Demo data first when asked for; then ingest, features and segment.

# COMMAND ----------

if params["generate_demo_data"].lower() == "true":
    cli.run_demo(spark, cfg, run_id)
else:
    cli.run_all(spark, cfg, run_id)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. The k sweep and the segments
# MAGIC WCSS (the elbow) and silhouette for each k, the chosen k flagged; then the segment profiles:
# MAGIC size, shares of customers and revenue, the dominant RFM segment and a descriptive name.

# COMMAND ----------

sweep = io.read(spark, io.table_ref(cfg.storage, cfg.tables.k_sweep)).where(f"run_id = '{run_id}'").orderBy("k")
summary = io.read(spark, io.table_ref(cfg.storage, cfg.tables.segment_profiles)).orderBy("segment_id")
try:
    display(sweep)  # noqa: F821 - Databricks
    display(summary)  # noqa: F821
except NameError:
    sweep.show()
    summary.show()
