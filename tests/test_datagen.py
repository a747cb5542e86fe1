from __future__ import annotations

import dataclasses

from chispa import assert_df_equality

from custseg import datagen
from tests.conftest import make_config


def test_generate_is_deterministic_and_has_real_data_quirks(spark, tmp_path):
    demo = dataclasses.replace(make_config(tmp_path).demo, customers=60)
    first = datagen.generate(spark, demo, str(tmp_path / "a"))
    second = datagen.generate(spark, demo, str(tmp_path / "b"))
    pos_a = spark.read.option("header", "true").csv(first["pos"])
    assert_df_equality(pos_a, spark.read.option("header", "true").csv(second["pos"]), ignore_row_order=True)
    web_a = spark.read.json(first["web"])
    assert_df_equality(web_a, spark.read.json(second["web"]), ignore_row_order=True)

    assert pos_a.where("loyalty_id IS NULL").count() > 0  # guests
    assert pos_a.where("receipt_no LIKE 'R%' AND CAST(qty AS INT) < 0").count() > 0  # returns
    assert pos_a.count() > pos_a.distinct().count()  # exact duplicates
    assert web_a.where("status = 'cancelled'").count() > 0
    assert web_a.where("kind = 'refund'").count() > 0
    truth = datagen.read_truth(spark, str(tmp_path / "a"))
    assert truth.count() == 60
    assert {r.archetype for r in truth.select("archetype").distinct().collect()} <= {a.name for a in datagen.ARCHETYPES}
