# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Insights: who is in each segment
# MAGIC Runs the `profile` job on the current labels (written by `02_segment`): sizes, shares
# MAGIC of customers and revenue, the dominant RFM segment, feature means, medians, z-scores
# MAGIC and the medians' percentile ranks, and a name and a one-sentence description per
# MAGIC segment. Then the plots, and the full HTML
# MAGIC report of the run (the `report` job).
# MAGIC
# MAGIC Parameters as in `01_explore`; run locally with `.venv/bin/python notebooks/03_insights.py`.

# COMMAND ----------

from custseg import cli
from custseg.insights import job as insights_job
from custseg.insights import plots, report
from custseg.notebook import Notebook

nb = Notebook(globals())
spark, cfg = nb.spark, nb.cfg
run_id = cli.new_run_id()
print(nb.params)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Profiles and names

# COMMAND ----------

cli.run_stage("profile", spark, cfg, run_id)
segments = nb.table("segment_profiles").orderBy("segment_id").toPandas()  # one row per segment
nb.show(segments, "Segments")
features = nb.table("feature_profiles").toPandas()  # segments x features rows
names = dict(zip(segments["segment_id"], segments["segment_name"], strict=True))

# COMMAND ----------

# MAGIC %md
# MAGIC ## What sets each segment apart, and what it is worth
# MAGIC Where each segment's median customer sits among all placed customers, as a
# MAGIC percentile per feature (50: typical); then each segment's share of customers
# MAGIC beside its share of revenue.

# COMMAND ----------

nb.plot("segment_profiles", plots.plot_feature_heatmap(report.rank_matrix(features), names))
nb.plot("segment_sizes", plots.plot_segment_sizes(segments))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The report
# MAGIC The `report` job writes one self-contained HTML file with every plot (the k sweep,
# MAGIC silhouettes, PCA and t-SNE scatters of a stratified sample, profiles, the RFM ×
# MAGIC segment table and the migration matrix) into `report.dir`.

# COMMAND ----------

result = insights_job.run_report(spark, cfg)
print(f"report: {result.path}")
