"""Experiment tracking with mlflow, when it is installed (``pip install 'custseg[mlflow]'``).

The Delta tables are the record of every run; mlflow is a second view of the same
facts for teams that compare runs there. The segment job logs one mlflow run per
custseg run (tagged ``custseg.run_id``): the settings as params, every k of the sweep
as metrics stepped by k, the chosen model's metrics, stability, and the fitted
PipelineModel. The report job adds its HTML and plots to that same run.

Where the runs go: ``mlflow.tracking_uri`` in config, else ``$MLFLOW_TRACKING_URI``,
else mlflow's own default, a SQLite store (``mlflow.db``) in the working directory.
Credentials for a tracking server come from mlflow's environment variables
(``MLFLOW_TRACKING_TOKEN`` and so on), never from config files.

Tracking never fails a job: the segments are already in Delta when it runs, so an
unreachable tracking server is a warning, not a lost run. An HTTP tracking server is
first checked with a TCP connection bounded by ``SERVER_CONNECT_TIMEOUT`` (mlflow's own
client would retry for minutes); params are masked by ``redaction.redact``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import importlib.util
import logging
import math
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from pyspark.ml import PipelineModel

from custseg.config import Config
from custseg.redaction import redact

log = logging.getLogger(__name__)

RUN_TAG = "custseg.run_id"
SERVER_CONNECT_TIMEOUT = 3.0  # seconds for the TCP check of an http(s) tracking server


class TrackingServerUnreachable(RuntimeError):
    """The tracking server does not accept connections; the message says which."""


def available(cfg: Config) -> bool:
    """mlflow is installed and config does not turn tracking off."""
    return cfg.mlflow.enabled and importlib.util.find_spec("mlflow") is not None


def tracking_uri(cfg: Config) -> str | None:
    """Where runs go: ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``; None: mlflow's default."""
    return cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_server(uri: str | None, timeout: float = SERVER_CONNECT_TIMEOUT) -> None:
    """Raise TrackingServerUnreachable when an http(s) tracking server does not accept a
    TCP connection within ``timeout``, or accepts one and sends no HTTP answer (any
    status will do) within ``timeout`` (a proxy or a stalled server, where mlflow's
    client would wait minutes per call). Local stores (sqlite:, file:, a path) and
    ``databricks`` are not checked."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        connection = (http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection)(
            host, port, timeout=timeout
        )
        try:
            connection.connect()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TrackingServerUnreachable(f"tracking server {redact(uri)} is not reachable ({reason})") from None
        try:
            connection.request("GET", (parts.path.rstrip("/") or "") + "/health")
            connection.getresponse().read()
        except TimeoutError:
            raise TrackingServerUnreachable(
                f"tracking server {redact(uri)} accepted a connection but did not answer within {timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TrackingServerUnreachable(
                f"tracking server {redact(uri)} did not answer over HTTP ({reason})"
            ) from None
        finally:
            connection.close()
    except ValueError as exc:  # a port that is not a number
        raise TrackingServerUnreachable(f"tracking server {redact(uri)} is not reachable ({exc})") from None
    # Each of mlflow's requests would otherwise wait up to 120 s, retried 7 times.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def _mlflow(cfg: Config):
    check_server(tracking_uri(cfg))
    import mlflow

    if cfg.mlflow.tracking_uri:
        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    return mlflow


def segment_params(cfg: Config, result: Any, as_of: dt.date) -> dict[str, str]:
    """What the run was fitted with, as mlflow params (strings of at most 6000 chars)."""
    seg = cfg.segment
    params: Mapping[str, Any] = {
        "algorithm": seg.algorithm,
        "features": ",".join(seg.features),
        "log1p": ",".join(f for f in cfg.features.log1p if f in seg.features),
        "cap_quantile": cfg.features.cap_quantile,
        "pca_components": len(result.explained_variance) or None,
        "pca_variance": seg.pca_variance,
        "k_range": f"{seg.k_min}-{seg.k_max}",
        "k": result.k,
        "selection": result.choice.rule if getattr(result, "choice", None) else ("config" if seg.k else seg.selection),
        "selection_reason": result.choice.reason if getattr(result, "choice", None) else None,
        "restarts": seg.restarts,
        "seed": seg.seed,
        "max_iter": seg.max_iter,
        "kmeans_tol": seg.kmeans_tol,
        "as_of_date": as_of.isoformat(),
        "model_version": result.model_version,
        "matched_to": result.matched_to,
        "customers": result.customers,
    }
    return {k: redact(str(v)) for k, v in params.items()}


def segment_metrics(result: Any, stability: Any | None) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    """The chosen model's metrics, and every k of the sweep as (name, value, step=k)."""
    chosen = result.chosen
    metric_names = ("wcss", "silhouette", "calinski_harabasz", "davies_bouldin")
    final = {name: getattr(chosen, name) for name in metric_names}
    if result.explained_variance:
        final["explained_variance"] = sum(result.explained_variance)
    if stability is not None and stability.replicates:
        final["stability_min_ari"] = stability.min_ari
        final["stability_seed_ari"] = stability.mean_seed_ari
        final["stability_bootstrap_ari"] = stability.mean_bootstrap_ari
        final["unstable_segments"] = len(stability.unstable_segments)
    steps = [(f"sweep_{name}", getattr(p, name), p.k) for p in result.sweep for name in metric_names]
    finite = {k: float(v) for k, v in final.items() if v is not None and math.isfinite(v)}
    return finite, [(n, float(v), k) for n, v, k in steps if v is not None and math.isfinite(v)]


def log_segment_run(
    cfg: Config, run_id: str, result: Any, as_of: dt.date, model: PipelineModel, stability: Any | None
) -> str | None:
    """One mlflow run for this segment run; returns its id, or None when not tracked."""
    if not available(cfg):
        return None
    try:
        mlflow = _mlflow(cfg)
        from mlflow.entities import Metric

        final, steps = segment_metrics(result, stability)
        with mlflow.start_run(run_name=run_id, tags={RUN_TAG: run_id}) as active:
            mlflow.log_params(segment_params(cfg, result, as_of))
            mlflow.log_metrics(final)
            stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
            mlflow.MlflowClient().log_batch(
                active.info.run_id, metrics=[Metric(name, value, stamp, k) for name, value, k in steps]
            )
            import mlflow.spark

            # Pinning the requirement skips mlflow's slow inference of the environment.
            mlflow.spark.log_model(model, "model", pip_requirements=[f"pyspark=={_pyspark_version()}"])
        log.info("mlflow: logged run %s to %s (experiment %s)", active.info.run_id,
                 redact(mlflow.get_tracking_uri()), redact(cfg.mlflow.experiment))  # fmt: skip
        return active.info.run_id
    except Exception as exc:  # tracking is a second view of what Delta already holds
        log.warning("mlflow: could not log run %s (%s: %s); the Delta tables are complete", run_id,
                    type(exc).__name__, _first_line(exc))  # fmt: skip
        return None


def log_report(cfg: Config, run_id: str, report_dir: str) -> str | None:
    """Add the report folder (HTML and plots) to the mlflow run of ``run_id``."""
    if not available(cfg):
        return None
    try:
        mlflow = _mlflow(cfg)
        found = mlflow.search_runs(filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", output_format="list")
        if not found:
            log.info("mlflow: no run tagged %s; the report is not logged", run_id)
            return None
        mlflow_run = found[0].info.run_id
        mlflow.MlflowClient().log_artifacts(mlflow_run, report_dir, artifact_path="report")
        log.info("mlflow: report added to run %s", mlflow_run)
        return mlflow_run
    except Exception as exc:
        log.warning("mlflow: could not log the report of run %s (%s: %s)", run_id, type(exc).__name__,
                    _first_line(exc))  # fmt: skip
        return None


def _first_line(exc: Exception) -> str:
    return redact(str(exc).splitlines()[0]) if str(exc) else ""


def _pyspark_version() -> str:
    import pyspark

    return pyspark.__version__
