"""A saved segmentation PipelineModel as a plain JSON artefact: every fitted parameter the
numpy scorer (``custseg.serve.scorer``) needs, and nothing that needs Spark to read.

The parameters come from the public ``pyspark.ml`` API (no driver-side JVM
handles), so this runs over Spark Connect too. Two stages are our own SQLTransformers,
whose parameters live in their SQL: the input transform (caps and log1p) and the
segment numbering. Their statements are parsed, then rebuilt with the very functions
that wrote them (``preprocess.input_transform``, ``model.relabel``) and compared: a statement
that does not rebuild exactly is refused, never half-understood. Bisecting k-means
assigns a customer by walking its tree of centres, and the Python API exposes only the
leaves; the tree is read from the stage's saved Parquet data with the DataFrame reader.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeansModel, GaussianMixtureModel, KMeansModel
from pyspark.ml.feature import (
    OneHotEncoderModel,
    PCAModel,
    SQLTransformer,
    StandardScalerModel,
    StringIndexerModel,
    VectorAssembler,
)
from pyspark.sql import SparkSession

from custseg.segment import model, preprocess
from custseg.serve.scorer import FORMAT, FORMAT_VERSION

log = logging.getLogger(__name__)

INPUT_PREFIX = preprocess.input_column("")
_INPUT_EXPR = re.compile(
    r"(?P<log>LOG1P\(GREATEST\()?(?P<least>LEAST\()?CAST\(`(?P<name>[^`]+)` AS DOUBLE\)"
    r"(?:, (?P<cap>[^)]+)\))?(?:, 0\.0D\)\))? AS `" + re.escape(INPUT_PREFIX) + r"(?P=name)`"
)
_CASE = re.compile(r"WHEN (-?\d+) THEN (-?\d+)")


class UnsupportedModelError(ValueError):
    """The saved model is not a pipeline this project fits, or uses a setting the
    scorer does not reproduce; the message names the stage."""


def _input_transform(stage: Transformer) -> list[dict]:
    """Numeric features in the model's order, each with its cap (or None) and whether
    it enters as log1p, read from the input transform's statement."""
    if not isinstance(stage, SQLTransformer):
        raise UnsupportedModelError(f"stage 0 is a {type(stage).__name__}, not the input transform")
    statement = stage.getStatement()
    numeric = [
        {"name": m["name"], "cap": float(m["cap"]) if m["cap"] else None, "log1p": bool(m["log"])}
        for m in _INPUT_EXPR.finditer(statement)
    ]
    rebuilt = preprocess.input_transform(
        [f["name"] for f in numeric],
        [f["name"] for f in numeric if f["log1p"]],
        {f["name"]: f["cap"] for f in numeric if f["cap"] is not None},
    ).getStatement()
    if rebuilt != statement:
        raise UnsupportedModelError(f"stage 0: an input transform this scorer cannot read: {statement}")
    return numeric


def _segment_numbering(stage: Transformer) -> dict[str, int]:
    """Raw cluster -> segment id, read from the numbering stage's CASE."""
    if not isinstance(stage, SQLTransformer):
        raise UnsupportedModelError(f"the last stage is a {type(stage).__name__}, not the segment numbering")
    statement = stage.getStatement()
    mapping = {int(cluster): int(segment) for cluster, segment in _CASE.findall(statement)}
    if model.relabel(mapping).getStatement() != statement:
        raise UnsupportedModelError(f"the last stage: a segment numbering this scorer cannot read: {statement}")
    return {str(cluster): segment for cluster, segment in sorted(mapping.items())}


def _categorical(indexer: StringIndexerModel, encoder: OneHotEncoderModel) -> list[dict]:
    """Per categorical feature: the indexer's labels in index order, and how the indexer
    and the encoder treat a value or an index they did not see at fit time."""
    inputs, indexed = indexer.getInputCols(), indexer.getOutputCols()
    if list(encoder.getInputCols()) != list(indexed):
        raise UnsupportedModelError("the one-hot encoder does not encode the string indexer's output")
    return [
        {
            "name": name,
            "labels": list(labels),
            "indexer_invalid": indexer.getHandleInvalid(),
            "category_size": int(size),
            "drop_last": bool(encoder.getDropLast()),
            "encoder_invalid": encoder.getHandleInvalid(),
        }
        for name, labels, size in zip(inputs, indexer.labelsArray, encoder.categorySizes, strict=True)
    ]


def _stage_data(model_dir: str, stage: Transformer, sub: str) -> str:
    """Where a stage's saved files are: PipelineModel writes ``stages/<index>_<uid>``."""
    return f"{model_dir.rstrip('/')}/stages/*_{stage.uid}/{sub}"


def _bisecting_tree(spark: SparkSession, model_dir: str, stage: BisectingKMeansModel) -> dict:
    """Every node of the tree (index, centre, its norm as saved, children in order) and
    the root: the one node no other lists as a child. Leaves carry the cluster indices."""
    rows = spark.read.parquet(_stage_data(model_dir, stage, "data/data")).select(
        "index", "center", "norm", "children"
    ).collect()  # fmt: skip  # the tree's 2k - 1 nodes, not customer rows
    nodes = sorted(
        ({"index": int(r["index"]), "centre": [float(v) for v in r["center"].toArray()], "norm": float(r["norm"]),
          "children": [int(c) for c in r["children"]]} for r in rows),
        key=lambda n: n["index"],
    )  # fmt: skip
    children = {c for n in nodes for c in n["children"]}
    roots = [n["index"] for n in nodes if n["index"] not in children]
    if len(roots) != 1:
        raise UnsupportedModelError(f"bisecting k-means: {len(roots)} roots in the saved tree of {model_dir}")
    leaves = [n for n in nodes if not n["children"]]
    centres = [[float(v) for v in c] for c in stage.clusterCenters()]
    if [n["index"] for n in leaves] != list(range(len(centres))) or [n["centre"] for n in leaves] != centres:
        raise UnsupportedModelError(f"bisecting k-means: the saved tree's leaves are not the centres ({model_dir})")
    return {"kind": "bisecting_kmeans", "distance": stage.getDistanceMeasure(), "root": roots[0], "nodes": nodes}


def _clusterer(spark: SparkSession, model_dir: str, stage: Transformer) -> dict:
    if isinstance(stage, KMeansModel):
        return {"kind": "kmeans", "distance": stage.getDistanceMeasure(),
                "centres": [[float(v) for v in c] for c in stage.clusterCenters()]}  # fmt: skip
    if isinstance(stage, BisectingKMeansModel):
        return _bisecting_tree(spark, model_dir, stage)
    if isinstance(stage, GaussianMixtureModel):
        gaussians = stage.gaussians
        return {
            "kind": "gaussian_mixture",
            "weights": [float(w) for w in stage.weights],
            "means": [[float(v) for v in g.mean.toArray()] for g in gaussians],
            "covariances": [g.cov.toArray().tolist() for g in gaussians],
        }
    raise UnsupportedModelError(f"clusterer: a {type(stage).__name__}, not k-means, bisecting k-means or a mixture")


def from_pipeline(spark: SparkSession, fitted: PipelineModel, model_dir: str) -> dict[str, Any]:
    """The artefact of a fitted segmentation pipeline saved at ``model_dir``: input
    transform, [StringIndexer, OneHotEncoder], VectorAssembler, StandardScaler, [PCA],
    clusterer, segment numbering, in that order (``preprocess.preprocessing`` and ``finish``)."""
    stages = list(fitted.stages)
    numeric = _input_transform(stages.pop(0))
    numbering = _segment_numbering(stages.pop())
    clusterer = _clusterer(spark, model_dir, stages.pop())
    if clusterer.get("distance", "euclidean") != "euclidean":
        raise UnsupportedModelError(f"clusterer: distance {clusterer['distance']!r}; the scorer reproduces euclidean")
    categorical: list[dict] = []
    if stages and isinstance(stages[0], StringIndexerModel):
        if len(stages) < 2 or not isinstance(stages[1], OneHotEncoderModel):
            raise UnsupportedModelError("a string indexer without its one-hot encoder")
        categorical = _categorical(stages.pop(0), stages.pop(0))
    pca = stages.pop() if stages and isinstance(stages[-1], PCAModel) else None
    found = [type(s).__name__ for s in stages]
    if found != [VectorAssembler.__name__, StandardScalerModel.__name__]:
        raise UnsupportedModelError(f"expected VectorAssembler then StandardScaler, found {found}")
    assembler, scaler = stages
    expected = [preprocess.input_column(f["name"]) for f in numeric] + [
        preprocess.input_column(f["name"]) for f in categorical
    ]
    if list(assembler.getInputCols()) != expected:
        raise UnsupportedModelError(f"the assembler reads {assembler.getInputCols()}, not {expected}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": Path(model_dir.rstrip("/")).name,
        "numeric": numeric,
        "categorical": categorical,
        "scaler": {
            "with_mean": bool(scaler.getWithMean()),
            "with_std": bool(scaler.getWithStd()),
            "mean": [float(v) for v in scaler.mean.toArray()],
            "std": [float(v) for v in scaler.std.toArray()],
        },
        "pca": None if pca is None else {"components": pca.pc.toArray().tolist()},
        "clusterer": clusterer,
        "segments": numbering,
    }


def extract(spark: SparkSession, model_dir: str) -> dict[str, Any]:
    """The artefact of the PipelineModel saved at ``model_dir`` (a path the session can read)."""
    artefact = from_pipeline(spark, PipelineModel.load(model_dir), model_dir)
    log.info("scorer artefact of model %s: %d numeric and %d categorical features, %s with %d segments",
             artefact["model_version"], len(artefact["numeric"]), len(artefact["categorical"]),
             artefact["clusterer"]["kind"], len(artefact["segments"]))  # fmt: skip
    return artefact


def save(artefact: dict[str, Any], path: str | Path) -> Path:
    """Write the artefact as JSON (floats as their shortest exact repr, no NaN)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(artefact, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return out
