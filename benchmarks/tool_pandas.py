"""The same segmentation the way a typical notebook does it, with pandas and scikit-learn.

Read the Parquet into one DataFrame, drop the rows our ingest would quarantine, group by
customer for recency, frequency (distinct purchase invoices), monetary (net of returns)
and average order value, then the model of conf/bench.yaml: log1p of the skewed
features, StandardScaler, PCA, and KMeans for every k with the same four metrics our
evaluate module reports (silhouette squared-Euclidean, as Spark's, on a 20k sample;
Calinski-Harabasz and Davies-Bouldin on all), k chosen by the same rule, a final fit,
and the labels written as Parquet.

No pyspark and no custseg import: the process holds only what a notebook would. pandas
and scikit-learn are imported inside the functions, so that importing them is timed as
start-up, like a notebook's first cell.

``python -m benchmarks.tool_pandas --raw DIR --work DIR --out FILE --spec JSON``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common


def load(raw: Path, as_of: Any):
    """The raw lines, less those our ingest quarantines (see benchmarks/common.py)."""
    import pandas as pd

    df = pd.read_parquet(raw)
    keep = (
        df[common.CUSTOMER].notna()
        & (df[common.QUANTITY] != 0)
        & (df[common.UNIT_PRICE] > 0)
        & (df[common.INVOICE_TS] < as_of)
    )
    return df[keep]


def rfm(df, as_of):
    """One row per customer: recency_days, frequency, monetary, avg_order_value.
    Customers with only returns have frequency 0 and no recency, as in our features."""
    import numpy as np

    amount = df[common.QUANTITY] * df[common.UNIT_PRICE]
    df = df.assign(amount=amount)
    purchases = df[df[common.QUANTITY] > 0]
    net = df.groupby(common.CUSTOMER).agg(monetary=("amount", "sum"))
    bought = purchases.groupby(common.CUSTOMER).agg(
        last_purchase=(common.INVOICE_TS, "max"),
        frequency=(common.INVOICE_NO, "nunique"),
        gross=("amount", "sum"),
    )
    out = net.join(bought, how="left")
    out["recency_days"] = (as_of - out["last_purchase"].dt.normalize()).dt.days
    out["frequency"] = out["frequency"].fillna(0).astype("int64")
    out["avg_order_value"] = out["gross"] / out["frequency"].replace(0, np.nan)
    return out[["recency_days", "frequency", "monetary", "avg_order_value"]]


def scale_pca(features, spec: dict[str, Any]):
    """Customers with every model feature -> (their ids, the scaled and projected matrix)."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    complete = features[spec["features"]].dropna()
    x = complete.astype("float64")
    for name in spec["log1p"]:
        if name in x:
            x[name] = np.log1p(x[name].clip(lower=0))
    scaled = StandardScaler().fit_transform(x.to_numpy())
    if spec["pca_components"]:
        scaled = PCA(n_components=spec["pca_components"], random_state=spec["seed"]).fit_transform(scaled)
    return complete.index, scaled


def kmeans(k: int, spec: dict[str, Any]):
    """k-means with as many seeded runs as our restarts (scikit-learn's n_init keeps the
    lowest inertia, as ours keeps the lowest WCSS), capped at our max_iter."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=spec.get("restarts", 1), max_iter=spec["max_iter"], random_state=spec["seed"])


def sweep(x, spec: dict[str, Any], sample: int) -> list[dict[str, float]]:
    """WCSS, silhouette (squared Euclidean, on a sample), Calinski-Harabasz and
    Davies-Bouldin for every k."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    points = []
    for k in range(spec["k_min"], spec["k_max"] + 1):
        fitted = kmeans(k, spec).fit(x)
        labels = fitted.labels_
        points.append({
            "k": k,
            "wcss": float(fitted.inertia_),
            "silhouette": float(silhouette_score(x, labels, metric="sqeuclidean", sample_size=min(sample, len(x)),
                                                 random_state=spec["seed"])),
            "calinski_harabasz": float(calinski_harabasz_score(x, labels)),
            "davies_bouldin": float(davies_bouldin_score(x, labels)),
        })  # fmt: skip
    return points


def choose_k(points: list[dict[str, float]], tolerance: float) -> int:
    """The benchmark's rule (conf/bench.yaml: segment.selection silhouette, as
    custseg.segment.evaluate.silhouette_k), restated here to keep pyspark
    out of this process: the smallest k within ``tolerance`` of the best silhouette."""
    best = max(p["silhouette"] for p in points)
    return min(p["k"] for p in points if p["silhouette"] >= best - tolerance)


def checks(features) -> dict[str, Any]:
    return {
        "customers": len(features),
        "customers_with_purchase": int((features["frequency"] > 0).sum()),
        "frequency_sum": int(features["frequency"].sum()),
        "recency_sum": int(features["recency_days"].sum()),
        "monetary_sum": round(float(features["monetary"].round(2).sum()), 2),
    }


def run(rec: common.Recorder, raw: Path, work: Path, spec: dict[str, Any], transactions: int, sample: int) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with rec.stage("startup", kind=common.SETUP):
        import pandas as pd
        import sklearn  # noqa: F401 - the import is part of a notebook's start-up

        as_of = pd.Timestamp(common.AS_OF)
    with rec.stage("total", rows=transactions, kind=common.TOTAL):
        with rec.stage("consolidate", rows=transactions):
            lines = load(raw, as_of)
        with rec.stage("rfm", rows=transactions):
            features = rfm(lines, as_of)
        del lines  # as a notebook would, before the model needs memory
        with rec.stage("scale_pca") as stage:
            ids, x = scale_pca(features, spec)
            stage["rows"] = len(ids)
        with rec.stage("k_sweep", rows=len(ids)):
            points = sweep(x, spec, sample)
        with rec.stage("final_fit", rows=len(ids)):
            k = choose_k(points, spec["silhouette_tolerance"])
            labels = pd.Series(kmeans(k, spec).fit_predict(x), index=ids, name="segment_id")
        with rec.stage("write_labels", rows=len(features)):
            out = features[[]].join(labels, how="left").fillna({"segment_id": -1}).astype({"segment_id": "int32"})
            out.reset_index().to_parquet(work / "labels.parquet", index=False)
    rec.set("k", k)
    rec.set("sweep", points)
    rec.set("checks", checks(features))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tool_pandas", description=__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--transactions", type=int, required=True)
    p.add_argument("--spec", required=True, help="the model settings as JSON (benchmarks.run.model_spec)")
    p.add_argument("--silhouette-sample", type=int, default=20_000)
    args = p.parse_args(argv)
    common.configure_logging(common.PANDAS)
    rec = common.Recorder(common.PANDAS, args.out)
    try:
        run(rec, args.raw.resolve(), args.work.resolve(), json.loads(args.spec), args.transactions,
            args.silhouette_sample)  # fmt: skip
    except BaseException as exc:  # recorded as the tool's outcome; the harness goes on
        return rec.fail(exc)
    rec.finish()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
