# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Segment: sweep k, choose, fit
# MAGIC Runs the `segment` job on the customer features written by `01_explore`: scale, PCA,
# MAGIC fit the clusterer for every k, choose k (elbow or silhouette, see the README), fit,
# MAGIC label every customer keeping the previous model's segment ids, merge the label
# MAGIC history and check stability. Then shows the sweep, the chosen model and the checks.
# MAGIC
# MAGIC Parameters as in `01_explore`; run locally with `.venv/bin/python notebooks/02_segment.py`.

# COMMAND ----------

from pyspark.sql import functions as F

from custseg import cli
from custseg.insights import plots
from custseg.notebook import Notebook

nb = Notebook(globals())
spark, cfg = nb.spark, nb.cfg
run_id = cli.new_run_id()
print(nb.params)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Fit
# MAGIC The `segment` job: its log shows each k of the sweep as it is fitted.

# COMMAND ----------

cli.run_stage("segment", spark, cfg, run_id)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The k sweep and the choice
# MAGIC WCSS (the elbow), Spark's silhouette, Calinski–Harabasz and Davies–Bouldin for every
# MAGIC k, with the chosen k marked and the rule that chose it.

# COMMAND ----------

sweep = nb.table("k_sweep").where(F.col("run_id") == run_id).orderBy("k").toPandas()  # one row per k
nb.show(sweep, "k sweep")
chosen_k = int(sweep.loc[sweep["chosen"], "k"].iloc[0])
nb.plot("k_sweep", plots.plot_k_sweep(sweep, chosen_k))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The model on record, and stability
# MAGIC What the model was fitted on and how well, then how well refits with other seeds
# MAGIC and on bootstrap samples agree with the labels (ARI), and each segment's Jaccard.

# COMMAND ----------

model_record = nb.table("models").where(F.col("run_id") == run_id)
nb.show(model_record.drop("centres"), "Model")
nb.show(nb.table("stability").where(F.col("run_id") == run_id).orderBy("kind", "replicate"), "Stability refits")
nb.show(nb.table("segment_stability").where(F.col("run_id") == run_id).orderBy("segment_id"), "Stability per segment")
cli.print_migrations(spark, cfg, run_id)
