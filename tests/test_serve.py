"""The numpy scorer against Spark: the same segment id as the batch path (``model.label``
with the saved PipelineModel) for every customer, for each clusterer; the -1 rule; and
the exported mlflow model behind a real ``mlflow models serve``."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.sql import functions as F

from benchmarks import serving
from custseg import cli
from custseg import columns as c
from custseg.segment import job as segment_job
from custseg.segment import model, preprocess
from custseg.serve import artefact, pyfunc, scorer
from tests.conftest import make_config
from tests.test_e2e import run_cli
from tests.test_realistic import realistic_lake  # noqa: F401 - the realistic lake, built once per run

SERVER_START_TIMEOUT = 120.0  # seconds for `mlflow models serve` to answer /ping


def spark_and_numpy(spark, cfg, fitted: PipelineModel, model_path: str, features) -> pd.DataFrame:
    """customer_id, Spark's segment (the batch ``label``) and the scorer's, side by side
    on the driver (a test's few thousand customers)."""
    labels = model.label(fitted, features, cfg, "v", 0, "r").select(c.CUSTOMER_ID, c.SEGMENT_ID).toPandas()
    customers = features.toPandas()
    ours = scorer.Scorer(artefact.from_pipeline(spark, fitted, model_path)).score(customers)
    both = customers[[c.CUSTOMER_ID]].assign(numpy=ours).merge(labels, on=c.CUSTOMER_ID, how="outer")
    assert len(both) == len(customers) == len(labels)
    return both


def assert_all_agree(both: pd.DataFrame, report, what: str) -> None:
    disagree = both[both["numpy"] != both[c.SEGMENT_ID]]
    report.append(f"{what}: numpy scorer = Spark for {len(both) - len(disagree)} of {len(both)} customers")
    assert disagree.empty, disagree.head(10).to_string()


def saved_latest(spark, cfg) -> tuple[PipelineModel, str]:
    fitted, record = segment_job.latest_model(spark, cfg)
    return fitted, record["model_path"]


def test_scorer_equals_spark_for_every_demo_customer(spark, demo_lake, demo_config, report):
    features, _ = segment_job.read_features(spark, demo_config)
    both = spark_and_numpy(spark, demo_config, *saved_latest(spark, demo_config), features)
    assert (both[c.SEGMENT_ID] == -1).any()  # customers with no purchase yet: -1 from both
    assert_all_agree(both, report, "demo, k-means")


def test_scorer_equals_spark_for_every_realistic_customer(spark, realistic_lake, report):  # noqa: F811
    features, _ = segment_job.read_features(spark, realistic_lake)
    both = spark_and_numpy(spark, realistic_lake, *saved_latest(spark, realistic_lake), features)
    assert len(both) >= 3000
    assert_all_agree(both, report, "realistic, k-means")


@pytest.mark.parametrize("algorithm", ["bisecting_kmeans", "gaussian_mixture"])
def test_scorer_equals_spark_for_other_clusterers(spark, demo_lake, demo_config, tmp_path, algorithm, report):
    cfg = dataclasses.replace(
        demo_config,
        segment=dataclasses.replace(demo_config.segment, algorithm=algorithm, k=4, restarts=1, model_dir=str(tmp_path)),
    )
    features, _ = segment_job.read_features(spark, cfg)
    fitted, result = model.fit(spark, features, cfg, f"serve-{algorithm}")
    # Far from every centre: a mixture's pdfs all underflow, so MLlib's EPSILON + w x pdf
    # ties and component 0 wins (log space would pick another).
    far = features.limit(3).select(
        F.concat(F.lit("far-"), c.CUSTOMER_ID).alias(c.CUSTOMER_ID),
        *[F.col(f) for f in features.columns if f not in (c.CUSTOMER_ID, c.MONETARY)],
        F.lit(1e12).alias(c.MONETARY),
    )
    scored = features.unionByName(far)
    both = spark_and_numpy(spark, cfg, PipelineModel.load(result.model_path), result.model_path, scored)
    assert_all_agree(both, report, f"demo + 3 far-away customers, {algorithm}")


def test_scorer_walks_the_bisecting_tree_on_sparse_vectors(spark, tmp_path, report):
    # No PCA and no centring (bisecting k-means): a vector with at most one non-zero of
    # its four entries is sparse, and MLlib measures its distances another way.
    base = make_config(tmp_path)
    cfg = dataclasses.replace(
        base,
        segment=dataclasses.replace(base.segment, algorithm="bisecting_kmeans", k=4, pca_components=None, restarts=1,
                                    model_dir=str(tmp_path)),
    )  # fmt: skip
    rows = [(f"c{i:02d}", (i * 37) % 11 if i % 3 else 0, 0 if i % 4 else 1 + i % 5, float(i % 7 == 0) * i * 10,
             0.0 if i % 2 else 25.0 + i) for i in range(40)]  # fmt: skip
    features = spark.createDataFrame(
        rows, "customer_id STRING, recency_days INT, frequency LONG, monetary DOUBLE, avg_order_value DOUBLE"
    ).selectExpr("*", "DATE'2024-07-01' AS as_of_date")
    fitted, result = model.fit(spark, features, cfg, "serve-sparse")
    both = spark_and_numpy(spark, cfg, fitted, result.model_path, features)
    customers = features.toPandas()
    s = scorer.Scorer(artefact.from_pipeline(spark, fitted, result.model_path))
    assembled, _ = s.assemble(customers)
    assert s.model_vectors(assembled)[1].any()  # some vectors are sparse
    assert_all_agree(both, report, "literal rows, bisecting k-means on sparse vectors")


def test_scorer_one_hot_encodes_categories_and_an_unseen_one_as_zeros(spark, tmp_path):
    cfg = dataclasses.replace(make_config(tmp_path).segment, features=["spend", "tier"], pca_components=None)
    rows = [(f"c{i}", float(i * 10 + (50 if i % 2 else 0)), "gold" if i % 2 else ("basic" if i % 3 else "plus"))
            for i in range(24)]  # fmt: skip
    inputs = spark.createDataFrame(rows, "customer_id STRING, spend DOUBLE, tier STRING")
    prep = preprocess.preprocessing(cfg, log1p=["spend"], caps={"spend": 200.0}, categorical=["tier"]).fit(inputs)
    vectors = prep.transform(inputs)
    clusters = KMeans(k=3, seed=1, featuresCol=c.VECTOR, predictionCol=c.PREDICTION).fit(vectors)
    fitted = PipelineModel(stages=[*prep.stages, clusters, model.relabel({0: 2, 1: 0, 2: 1})])
    path = str(tmp_path / "categorical")
    fitted.write().overwrite().save(path)
    scoring = spark.createDataFrame([*rows, ("new", 75.0, "platinum"), ("big", 990.0, "basic")], inputs.schema)
    expected = PipelineModel.load(path).transform(scoring).select(c.CUSTOMER_ID, c.SEGMENT_ID).toPandas()
    art = artefact.extract(spark, path)
    assert art["categorical"][0]["labels"] == ["basic", "gold", "plus"]  # alphabetical
    ours = scorer.Scorer(art).score(scoring.toPandas())
    assert ours.tolist() == expected[c.SEGMENT_ID].tolist()


def test_scorer_gives_minus_one_to_a_customer_missing_a_model_feature(spark, demo_lake, demo_config):
    fitted, path = saved_latest(spark, demo_config)
    features, _ = segment_job.read_features(spark, demo_config)
    # Three customers made incomplete: a null, a NaN sent for one, a feature left out.
    three = features.orderBy(c.CUSTOMER_ID).limit(3)
    first = three.toPandas()
    incomplete = three.withColumn("monetary", F.lit(None).cast("double"))
    batch = model.label(fitted, incomplete, demo_config, "v", 0, "r").select(c.SEGMENT_ID).toPandas()
    assert batch[c.SEGMENT_ID].tolist() == [-1, -1, -1]
    s = scorer.Scorer(artefact.from_pipeline(spark, fitted, path))
    records = first.drop(columns=["as_of_date"]).to_dict("records")
    records[0]["monetary"], records[1]["monetary"] = None, float("nan")
    del records[2]["monetary"]
    assert s.score(records).tolist() == [-1, -1, -1]
    complete = s.score(first.drop(columns=["as_of_date"]).to_dict("records"))
    assert (complete >= 0).all()


def test_scorer_scores_one_record_and_an_empty_frame(spark, demo_lake, demo_config):
    s = scorer.Scorer(artefact.from_pipeline(spark, *saved_latest(spark, demo_config)))
    one = {"recency_days": 10, "frequency": 4, "monetary": 250.0, "avg_order_value": 62.5}
    assert s.score(one).shape == (1,)
    assert s.score(pd.DataFrame(columns=list(one))).shape == (0,)


def test_artefact_round_trips_through_json(spark, demo_lake, demo_config, tmp_path):
    art = artefact.from_pipeline(spark, *saved_latest(spark, demo_config))
    loaded = scorer.load(artefact.save(art, tmp_path / "scorer.json"))
    assert loaded.artefact == art
    with pytest.raises(ValueError, match="not a custseg-scorer artefact"):
        scorer.Scorer({**art, "format_version": 99})


# --------------------------------------------------------------------------- served


@pytest.fixture(scope="module")
def exported(spark, demo_lake, demo_config, tmp_path_factory) -> tuple[Path, str]:
    """The demo model exported by the CLI's stage, from a copy of the saved model (the
    demo lake stays as it is); returns the mlflow model's folder and the model's path."""
    fitted, record = segment_job.latest_model(spark, demo_config)
    copy = tmp_path_factory.mktemp("exported") / record["model_version"]
    shutil.copytree(record["model_path"], copy)
    moved = {**record.asDict(), "model_path": str(copy)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segment_job, "latest_model", lambda *_args, **_kw: (fitted, moved))
        counts = cli.run_export_scorer(spark, demo_config, "export-run")
    assert counts == {"segments": record["k"], "features": len(demo_config.segment.features)}
    return Path(f"{copy}-scorer"), str(copy)


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory) -> Iterator[str]:
    """``mlflow models serve`` on the exported model, a process of its own, killed at the end; its URL."""
    with serving.served(exported[0], tmp_path_factory.mktemp("served") / "server.log", SERVER_START_TIMEOUT) as url:
        yield url


def test_served_model_answers_equal_spark_for_every_demo_customer(spark, demo_config, exported, served, report):
    fitted = PipelineModel.load(exported[1])
    features, _ = segment_job.read_features(spark, demo_config)
    expected = model.label(fitted, features, demo_config, "v", 0, "r").select(c.CUSTOMER_ID, c.SEGMENT_ID).toPandas()
    customers = features.toPandas()[[c.CUSTOMER_ID, *demo_config.segment.features]]
    client = serving.Client(served)
    answers = customers[[c.CUSTOMER_ID]].assign(served=client.invoke(customers)).merge(expected, on=c.CUSTOMER_ID)
    assert len(answers) == len(customers)
    assert (answers["served"] == answers[c.SEGMENT_ID]).all()
    report.append(f"served model = Spark for {len(answers)} of {len(customers)} demo customers")
    single = client.invoke(customers.iloc[:1].assign(monetary=None))  # JSON null: missing, so -1
    assert single == [-1]


def test_exported_model_loads_with_mlflow_and_needs_only_numpy_and_pandas(exported):
    import mlflow

    requirements = (exported[0] / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy", "pandas"]  # mlflow adds itself
    loaded = mlflow.pyfunc.load_model(str(exported[0]))
    customer = pd.DataFrame([{"recency_days": 10.0, "frequency": 4.0, "monetary": 250.0, "avg_order_value": 62.5}])
    assert np.asarray(loaded.predict(customer)).shape == (1,)


def test_export_refuses_an_object_storage_uri_and_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(pyfunc.ExportError, match="log_model"):
        pyfunc.save(kmeans_artefact([[0.0, 0.0]], {"0": 0}), "s3://bucket/models/v1-scorer")
    (tmp_path / "taken").mkdir()
    with pytest.raises(pyfunc.ExportError, match="is not an exported model"):
        pyfunc.save(kmeans_artefact([[0.0, 0.0]], {"0": 0}), tmp_path / "taken")


def test_export_without_mlflow_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(pyfunc.MlflowMissingError, match=r"pip install 'custseg\[mlflow\]'"):
        pyfunc.require_mlflow()


def test_logged_model_registers_and_loads_from_the_registry(exported, tmp_path):
    # What Databricks Model Serving takes: a registered version of the logged model.
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("serve-test")
        art = scorer.load(exported[0] / "artifacts" / "scorer.json").artefact
        with mlflow.start_run():
            pyfunc.log_model(art, registered_model_name="segment_scorer")
        loaded = mlflow.pyfunc.load_model("models:/segment_scorer/1")
        customer = pd.DataFrame([{"recency_days": 10.0, "frequency": 4.0, "monetary": 250.0, "avg_order_value": 62.5}])
        assert np.asarray(loaded.predict(customer)).tolist() == scorer.Scorer(art).score(customer).tolist()
    finally:
        mlflow.set_tracking_uri(previous)


def test_main_export_scorer_without_a_model_exits_2(spark, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # an empty lake: no model on record
    assert run_cli("export-scorer") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no model on record" in errors[0] and "run the segment job first" in errors[0]


def kmeans_artefact(centres: list[list[float]], segments: dict[str, int]) -> dict:
    """A hand-made artefact: two numeric features as they are, no PCA, the given centres."""
    return {
        "format": scorer.FORMAT, "format_version": scorer.FORMAT_VERSION, "model_version": "hand-made",
        "numeric": [{"name": "x", "cap": None, "log1p": False}, {"name": "y", "cap": 10.0, "log1p": False}],
        "categorical": [],
        "scaler": {"with_mean": True, "with_std": True, "mean": [0.0, 0.0], "std": [1.0, 2.0]},
        "pca": None,
        "clusterer": {"kind": "kmeans", "distance": "euclidean", "centres": centres},
        "segments": segments,
    }  # fmt: skip


def test_scorer_breaks_ties_to_the_lower_cluster_as_mllib():
    s = scorer.Scorer(kmeans_artefact([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], {"0": 2, "1": 0, "2": 1}))
    customers = pd.DataFrame({"x": [0.0, -0.4, 0.1, 0.0, 5.0], "y": [0.0, 0.0, 100.0, -2.0, None]})
    # (0, 0) is at distance 1 from all three centres: cluster 0 (segment 2). (-0.4, 0): cluster 1.
    # y = 100 is capped at 10, then scaled by 1/2: (0.1, 5) is nearest cluster 2. (0, -2) scales
    # to (0, -1), as near cluster 0 as cluster 1: cluster 0 again. A missing y: -1.
    assert s.score(customers).tolist() == [2, 0, 1, 2, -1]
