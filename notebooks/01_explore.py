# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Explore: from raw sources to customer features
# MAGIC Consolidates the raw transaction sources into the canonical `transactions` table
# MAGIC (bad rows to quarantine with a reason), computes the customer features, and looks at
# MAGIC the data before anything is segmented: the data profile, what was quarantined and
# MAGIC why, activity per month, the feature distributions and the RFM grid.
# MAGIC
# MAGIC It calls the same library functions as the `spark-submit` jobs. On Databricks the
# MAGIC parameters are widgets (install the `custseg` wheel on the cluster first); locally run
# MAGIC `.venv/bin/python notebooks/01_explore.py` from the project root, with parameters as
# MAGIC `CUSTSEG_<NAME>` environment variables. Then run `02_segment` and `03_insights`.

# COMMAND ----------

# MAGIC %md
# MAGIC ## Parameters and session
# MAGIC `configs` (comma-separated YAML files, later ones win), `overrides` (`key=value;…`),
# MAGIC `generate_demo_data` (write the demo sources first) and `plots_dir` (local runs).

# COMMAND ----------

from custseg import cli
from custseg.config import MODEL_FEATURES
from custseg.demo import datagen
from custseg.insights import eda
from custseg.notebook import Notebook

nb = Notebook(globals(), {"generate_demo_data": "true"})
spark, cfg = nb.spark, nb.cfg
run_id = cli.new_run_id()
print(nb.params)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Ingest and features
# MAGIC The `ingest` and `features` jobs, as `custseg run` runs them.

# COMMAND ----------

if nb.params["generate_demo_data"].lower() == "true":
    datagen.generate(spark, cfg.demo)
cli.run_stage("ingest", spark, cfg, run_id)
cli.run_stage("features", spark, cfg, run_id)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The data profile and the quarantine
# MAGIC One row per source and one for all: rows, accepted and quarantined, null rates,
# MAGIC distinct customers, the time range and amount quantiles. Then why rows were set aside.

# COMMAND ----------

nb.show(nb.table("profile"), "Data profile of the latest ingest")
nb.show(nb.table("quarantine").groupBy("source", "reason").count().orderBy("source", "reason"), "Quarantined rows")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Activity over time
# MAGIC Revenue and returns, purchases and active customers per month (one row per month
# MAGIC reaches the driver, however many transactions there are).

# COMMAND ----------

months = eda.monthly_activity(nb.table("transactions")).toPandas()  # one row per month
nb.show(months, "Activity per month")
nb.plot("monthly_activity", eda.plot_monthly(months))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Feature distributions and the RFM grid
# MAGIC Histograms computed in Spark (skewed features on the log1p scale the model sees),
# MAGIC and the customers in each R × F cell with the RFM segment the rules give it.

# COMMAND ----------

features = nb.table("features")
shown = [f for f in MODEL_FEATURES if f in features.columns]
histograms = {f: eda.histogram(features, f, bins=30, log1p=f in cfg.features.log1p) for f in shown}
nb.plot("feature_distributions", eda.plot_histograms(histograms, cfg.features.log1p))
grid = eda.rfm_grid(features).toPandas()  # at most bins x bins rows
nb.show(grid, "Customers per RFM cell")
nb.plot("rfm_grid", eda.plot_rfm_grid(grid, cfg.rfm.bins))
