"""mlflow tracking (the optional extra): what a segment run logs, and that tracking
never fails a job."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import logging
import math
import socket
import threading
import time

import mlflow
import mlflow.spark
import pytest
from chispa import assert_df_equality

from custseg import tracking
from custseg.demo import standalone
from custseg.segment import model, preprocess
from custseg.segment.evaluate import SweepPoint
from custseg.segment.model import SegmentResult
from tests.conftest import make_config
from tests.test_model import blobs


def result_with(sweep, k=3, explained=()):
    return SegmentResult(k=k, sweep=sweep, model_version=f"kmeans-k{k}-r1", model_path="/x",
                         customers=10, explained_variance=list(explained))  # fmt: skip


def test_segment_metrics_are_the_chosen_k_plus_the_sweep_stepped_by_k():
    sweep = [SweepPoint(2, 10.0, 0.5, 30.0, 0.9), SweepPoint(3, 4.0, 0.7, 60.0, float("nan"))]
    final, steps = tracking.segment_metrics(result_with(sweep, explained=[0.5, 0.25]), None)
    # the chosen k's Davies-Bouldin is NaN: left out rather than logged as a number
    assert final == {"wcss": 4.0, "silhouette": 0.7, "calinski_harabasz": 60.0, "explained_variance": 0.75}
    assert steps == [
        ("sweep_wcss", 10.0, 2), ("sweep_silhouette", 0.5, 2), ("sweep_calinski_harabasz", 30.0, 2),
        ("sweep_davies_bouldin", 0.9, 2), ("sweep_wcss", 4.0, 3), ("sweep_silhouette", 0.7, 3),
        ("sweep_calinski_harabasz", 60.0, 3),
    ]  # fmt: skip


def test_disabled_tracking_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_config(tmp_path, "mlflow.enabled=false")
    assert tracking.log_report(cfg, "r1", str(tmp_path)) is None
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mlflow keeps artifacts beside its store, relative to here
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield make_config(tmp_path, "mlflow.enabled=true", f"mlflow.tracking_uri={store}", "mlflow.experiment=seg")
    mlflow.set_tracking_uri(None)


def test_segment_run_logs_params_metrics_sweep_model_and_report(spark, tmp_path, tracked):
    cfg = make_config(tmp_path, "segment.k_max=4", "segment.k_min=2")
    feats = blobs(spark)
    fitted, result = model.fit(spark, feats, cfg, "r1")
    as_of = feats.first()["as_of_date"]

    run_id = tracking.log_segment_run(tracked, "r1", result, as_of, fitted, None)

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.tags[tracking.RUN_TAG] == "r1"
    assert run.data.params["k"] == str(result.k) == "3"
    assert run.data.params["features"] == "recency_days,frequency,monetary,avg_order_value"
    assert run.data.params["kmeans_tol"] == "0.003"  # the model's stopping rule, as configured
    chosen = next(p for p in result.sweep if p.k == 3)
    assert math.isclose(run.data.metrics["silhouette"], chosen.silhouette, rel_tol=1e-12)
    wcss = client.get_metric_history(run_id, "sweep_wcss")
    assert sorted((m.step, m.value) for m in wcss) == [(p.k, p.wcss) for p in result.sweep]
    # the logged model is the fitted pipeline: it labels every customer as the original does
    inputs = feats.transform(preprocess.model_inputs(cfg.segment.features))
    reloaded = mlflow.spark.load_model(f"runs:/{run_id}/model")
    assert_df_equality(
        reloaded.transform(inputs).select("customer_id", "segment_id"),
        fitted.transform(inputs).select("customer_id", "segment_id"),
        ignore_row_order=True,
    )

    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.html").write_text("<html></html>")
    assert tracking.log_report(tracked, "r1", str(report_dir)) == run_id
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.html"]


def test_unreachable_tracking_server_warns_and_does_not_fail(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = make_config(tmp_path, "mlflow.enabled=true", "mlflow.tracking_uri=http://127.0.0.1:9")
    try:
        with caplog.at_level(logging.WARNING, logger="custseg.tracking"):
            assert tracking.log_report(cfg, "r1", str(tmp_path)) is None
    finally:
        mlflow.set_tracking_uri(None)
    assert "mlflow: could not log the report of run r1" in caplog.text


def log_segment_run_without_a_server(cfg, caplog) -> tuple[list[tuple[str, str]], float]:
    """What logging a segment run to ``cfg``'s tracking server logs, and how long it takes."""
    started = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="custseg.tracking"):
            assert tracking.log_segment_run(cfg, "r1", None, dt.date(2025, 1, 1), None, None) is None
    finally:
        mlflow.set_tracking_uri(None)
    return [(r.levelname, r.getMessage()) for r in caplog.records], time.monotonic() - started


def test_unreachable_tracking_server_is_one_bounded_warning_without_the_secret(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MY_SECRET", "s3cr3t-Zq9x-7731")
    port = standalone.free_port()  # nothing listens there; mlflow's own retries are left at their defaults
    cfg = make_config(
        tmp_path, "mlflow.enabled=true", f"mlflow.tracking_uri=http://user:${{MY_SECRET}}@127.0.0.1:{port}"
    )
    records, seconds = log_segment_run_without_a_server(cfg, caplog)
    assert seconds < 10
    assert records == [
        ("WARNING", f"mlflow: could not log run r1 (TrackingServerUnreachable: tracking server "
                    f"http://user:***@127.0.0.1:{port} is not reachable (Connection refused)); the Delta tables "
                    "are complete"),
    ]  # fmt: skip
    assert "s3cr3t-Zq9x-7731" not in caplog.text


def test_tracking_server_that_accepts_and_never_answers_is_one_bounded_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as server:  # the kernel accepts; nobody reads or answers
        port = server.getsockname()[1]
        cfg = make_config(tmp_path, "mlflow.enabled=true", f"mlflow.tracking_uri=http://127.0.0.1:{port}")
        records, seconds = log_segment_run_without_a_server(cfg, caplog)
    assert seconds < 10
    assert records == [
        ("WARNING", f"mlflow: could not log run r1 (TrackingServerUnreachable: tracking server "
                    f"http://127.0.0.1:{port} accepted a connection but did not answer within 3 s); the Delta "
                    "tables are complete"),
    ]  # fmt: skip


def test_tracking_server_check_passes_on_any_http_answer(tmp_path):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's name)
            self.send_error(404)

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), NotFound) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        tracking.check_server(f"http://127.0.0.1:{server.server_address[1]}/prefix")


def test_segment_params_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTSEG_TEST_VALUE", "param-secret-5521")
    cfg = make_config(tmp_path, "mlflow.experiment=${CUSTSEG_TEST_VALUE}")  # the loader remembers it
    sweep = [SweepPoint(3, 4.0, 0.7, 60.0, 0.5)]
    result = dataclasses.replace(result_with(sweep), matched_to="kmeans-k3-param-secret-5521;token=abc")
    params = tracking.segment_params(cfg, result, dt.date(2025, 1, 1))
    assert params["matched_to"] == "kmeans-k3-***;token=***"
    assert params["k"] == "3" and params["as_of_date"] == "2025-01-01"
