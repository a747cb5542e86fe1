"""The ``custseg`` command: one subcommand per job, plus the end-to-end ``run``.

The same ``main`` serves the console command, the thin scripts in ``jobs/`` that
spark-submit runs, and a Databricks wheel task. It parses flags, loads the config,
configures logging, gets the session, calls the stage's ``run`` and returns an exit
code: 0 on success, 2 for a configuration, input or prerequisite problem (one line that
says what to fix, no traceback unless --debug), 1 for anything else. Every log record is
redacted (``custseg.redaction``): no secret from the config reaches the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from custseg import __version__, io, progress, tracking
from custseg import columns as c
from custseg.config import Config, ConfigError, load_config, load_defaults
from custseg.config_view import config_changes, redacted
from custseg.demo import datagen
from custseg.features import job as features_job
from custseg.ingest import job as ingest_job
from custseg.ingest.sources import SourceError
from custseg.insights import job as insights_job
from custseg.insights import profiles
from custseg.io import ConcurrentWriteError, PrerequisiteError
from custseg.redaction import install_log_redaction
from custseg.segment import job as segment_job
from custseg.segment.evaluate import adjusted_rand_index
from custseg.serve import artefact, pyfunc
from custseg.serve import job as serve_job
from custseg.serve.postgres import CrmDatabaseError
from custseg.spark import (
    ConnectServerUnreachableError,
    MasterUnreachableError,
    MissingJarsError,
    garbage_collected_at_the_end,
    get_spark,
)
from custseg.value import job as value_job
from custseg.value.fitting import ModelNotIdentifiedError

log = logging.getLogger("custseg")

ENV_VAR = "CUSTSEG_ENV"
# Exit code 2, one line, no traceback (unless --debug): what the user can fix.
USER_ERRORS = (
    ConfigError, SourceError, PrerequisiteError, MissingJarsError, MasterUnreachableError,
    ConnectServerUnreachableError, ConcurrentWriteError, artefact.UnsupportedModelError, pyfunc.ExportError,
    ModelNotIdentifiedError, CrmDatabaseError,
)  # fmt: skip


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def default_configs() -> list[str]:
    """conf/base.yaml plus the overlay named by $CUSTSEG_ENV (default: local)."""
    env = os.environ.get(ENV_VAR, "local")
    return ["conf/base.yaml", f"conf/{env}.yaml"]


# --------------------------------------------------------------------------- stages


# Each stage returns the row counts its end-of-stage log line shows.
Counts = dict[str, int]


def run_ingest(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    counts: Counts = {}
    if cfg.sources:
        result = ingest_job.run(spark, cfg, run_id)
        print_profile(result.profile)
        for key, attr in (("rows read", "rows_read"), ("accepted", "accepted"), ("new", "inserted"),
                          ("quarantined", "quarantined"), ("duplicates", "duplicates")):  # fmt: skip
            counts[key] = sum(getattr(s, attr) for s in result.counts)
    if cfg.customers is not None:
        table = ingest_job.run_customers(spark, cfg, run_id)
        print(f"\nCustomer table {cfg.customers.name}: read {table.rows_read}, accepted {table.accepted}, "
              f"quarantined {table.quarantined}, exact duplicates {table.duplicates}")  # fmt: skip
        counts.update({"customer rows read": table.rows_read, "customer rows accepted": table.accepted})
    return counts


PROFILE_SUMMARY = (
    "source", "rows", "accepted", "quarantined", "null_rate_customer_id", "distinct_customers", "first_event_ts",
    "last_event_ts", "amount_p50", "amount_p99", "return_share", "extreme_rows",
)  # fmt: skip


def print_profile(profile: list[dict]) -> None:
    """The short version of the data profile table: one line per source, and ALL."""
    if not profile:
        print("\nData profile: no rows read this run")
        return
    table = pd.DataFrame(profile, columns=list(PROFILE_SUMMARY))
    for col in ("first_event_ts", "last_event_ts"):
        table[col] = pd.to_datetime(table[col]).dt.strftime("%Y-%m-%d")
    print("\nData profile (rows read this run, duplicates excluded; amounts of accepted purchases; -: no rows):")
    # A source of empty files has no dates, amounts or rates: a dash, not NaN or None.
    print(table.astype(object).where(table.notna(), "-").to_string(index=False))


def run_features(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    features_job.run(spark, cfg)
    return {"customers": features_job.customers(spark, cfg)}


def run_segment(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    result = segment_job.run(spark, cfg, run_id)
    log.info("segment: k=%d, model %s", result.k, result.model_version)
    print_migrations(spark, cfg, run_id)
    return {"customers fitted": result.customers, "segments": result.k}


def print_migrations(spark: SparkSession, cfg: Config, run_id: str) -> None:
    """Customers per (previous segment, new segment), when there was a previous run."""
    matrix, previous_run_id = insights_job.read_migrations(spark, cfg, run_id)
    if matrix is None:
        return
    print(f"\nMigration since run {previous_run_id} (rows: from, columns: to; new: not labelled then, gone: not now):")
    print(matrix.to_string())


def run_profile(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    return {"segments": insights_job.run_profiles(spark, cfg).count()}


def run_report(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    """The report of the current labels' run, linked from the run log and, when
    tracking, added to that run in mlflow."""
    result = insights_job.run_report(spark, cfg)
    ingest_job.log_artifact(spark, cfg, result.run_id, "report", result.path)
    tracking.log_report(cfg, result.run_id, str(Path(result.path).parent))
    print(f"\nReport: {result.path}")
    return {"plots": len(result.plots)}


def run_value(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    result = value_job.run(spark, cfg, run_id)
    for fit in (result.calibration, result.purchases, result.spend):
        if fit is not None:
            estimates = ", ".join(f"{k} {v:.4g} (SE {fit.std_errors[k]:.2g})" for k, v in fit.params.items())
            period = "before the holdout" if fit is result.calibration else "all history"
            print(f"{fit.model} ({period}): {estimates}; log-likelihood {fit.log_likelihood:.1f}"
                  f"{'' if fit.converged else '; NOT converged: ' + fit.message}")  # fmt: skip
    if result.holdout is not None:
        h = result.holdout
        print(f"Holdout: {h.actual:.0f} repeat purchases by {h.customers} customers, {h.expected:.1f} expected, "
              f"mean absolute error {h.mae:.3f} per customer")  # fmt: skip
    print(f"Customer value: {io.table_ref(cfg.storage, cfg.tables.customer_value)}")
    return {"customers": result.purchases.customers}


def run_score(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    change = segment_job.score(spark, cfg, run_id, cfg.segment.score_model)
    print_migrations(spark, cfg, run_id)
    print(f"Scored: {change.new} new customers, {change.changed} moved segment, {change.unchanged} unchanged, "
          f"{change.gone} no longer in the features table")  # fmt: skip
    return {"new": change.new, "moved": change.changed, "unchanged": change.unchanged, "gone": change.gone}


def run_export_scorer(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    """The saved model (the latest, or segment.score_model) as an mlflow model beside it,
    ``<model>-scorer``, that scores in plain numpy (custseg.serve, docs/serving.md)."""
    fitted, record = segment_job.latest_model(spark, cfg, cfg.segment.score_model)
    scorer = artefact.from_pipeline(spark, fitted, record["model_path"])
    scorer["model_version"] = record["model_version"]
    out = pyfunc.save(scorer, f"{record['model_path'].rstrip('/')}-scorer")
    print(f"Scorer of model {record['model_version']}: {out}\n"
          f"  serve it: mlflow models serve -m {out} --env-manager local -p 5000")  # fmt: skip
    return {"segments": len(scorer["segments"]), "features": len(scorer["numeric"]) + len(scorer["categorical"])}


def run_export(spark: SparkSession, cfg: Config, run_id: str) -> Counts:
    result = serve_job.run(spark, cfg, run_id)
    applied = f", {result.applied} target rows inserted or updated" if cfg.export.format == "jdbc" else ""
    print(f"CRM export to {result.target}: {result.changed} customers changed, {result.sent} rows sent{applied}")
    return {"customers changed": result.changed, "rows sent": result.sent, "rows applied": result.applied}


# Checks that need no Spark session, made before it starts: an unreachable database
# then exits 2 in seconds, not after the session's start.
PREFLIGHT: dict[str, Callable[[Config], None]] = {"export": serve_job.check_target}


def run_stage(name: str, spark: SparkSession, cfg: Config, run_id: str) -> None:
    with progress.stage(name) as counts:
        counts.update(STAGES[name][0](spark, cfg, run_id) or {})


PIPELINE = ("ingest", "features", "value", "segment", "profile", "report")


def runs_value(cfg: Config) -> bool:
    """Whether ``custseg run`` fits the customer value: when value.enabled and there are
    transactions to fit it on (a customer table alone has none)."""
    return cfg.value.enabled and bool(cfg.sources)


def run_all(spark: SparkSession, cfg: Config, run_id: str) -> None:
    started = time.perf_counter()
    for name in PIPELINE:
        if name == "value":
            if not runs_value(cfg):
                log.info("value: skipped (%s)", "value.enabled is false" if cfg.sources else "no transaction sources")
                continue
            try:
                run_stage(name, spark, cfg, run_id)
            except ModelNotIdentifiedError as exc:
                # Customer value is an addition to the segments, not a prerequisite: a run on
                # data without repeat buyers still segments them (`custseg value` alone exits 2).
                log.warning("value: %s; the run goes on without customer value", exc)
            continue
        run_stage(name, spark, cfg, run_id)
    log.info("pipeline done in %.1fs", time.perf_counter() - started)
    print_summary(spark, cfg, run_id)


def run_demo(spark: SparkSession, cfg: Config, run_id: str) -> None:
    with progress.stage("demo data") as counts:
        datagen.generate(spark, cfg.demo)
        counts["customers"] = cfg.demo.customers
    run_all(spark, cfg, run_id)
    if cfg.demo.scenario == "realistic":
        print("Realistic demo customers: no planted archetypes to recover (no adjusted Rand index)")
        return
    labels = segment_job.current_labels(spark, cfg)
    truth = datagen.read_truth(spark, cfg.demo.raw_dir)
    ari = adjusted_rand_index(labels.join(truth, on=c.CUSTOMER_ID, how="inner"), c.SEGMENT_ID, "archetype")
    print(f"Planted archetypes recovered with adjusted Rand index {ari:.3f}")


SEGMENT_SUMMARY = (
    "segment_id", "segment_name", "customers", "customer_share", "revenue_share", "revenue_index",
    "dominant_rfm_segment", "median_clv", "mean_p_alive",
)  # fmt: skip


def print_summary(spark: SparkSession, cfg: Config, run_id: str) -> None:
    """The segment profiles (one row per segment, then each one's description below the
    table, which would be too wide with them), stability and where the tables are."""
    summary = insights_job.run_summary(spark, cfg, run_id, (*SEGMENT_SUMMARY, profiles.DESCRIPTION))
    table = summary.segments
    print(f"\nSegments ({len(table)}; -1 = customers the model cannot place, e.g. no purchase yet):")
    print(table[list(SEGMENT_SUMMARY)].to_string(index=False))
    for r in table.itertuples(index=False):
        print(f"  {r.segment_id:>3}  {r.segment_name}: {r.description}")
    if summary.chosen is not None and summary.chosen["reason"]:
        print(f"Why k = {summary.chosen[c.K]}: {summary.chosen['reason']}")
    if summary.stability is not None:
        print("Stability (adjusted Rand index against the labels): "
              + ", ".join(f"{r['kind']} refits {r['ari']:.3f} (n={r['n']})" for r in summary.stability))  # fmt: skip
    for key in ("segment_profiles", "labels", "label_history", "models", "k_sweep", "features", "transactions"):
        print(f"  {key:<17} {io.table_ref(cfg.storage, getattr(cfg.tables, key))}")


STAGES: dict[str, tuple[Callable[[SparkSession, Config, str], Counts | None], str]] = {
    "ingest": (
        run_ingest,
        "consolidate the raw sources into the canonical transactions table (plus quarantine and run log)",
    ),
    "features": (run_features, "compute RFM and behavioural features per customer as of a date"),
    "segment": (run_segment, "scale, PCA, sweep k, choose k, fit, label, merge history, check stability"),
    "profile": (run_profile, "profile, name and describe the segments (sizes, shares, median ranks, RFM mix)"),
    "report": (run_report, "write the HTML report (and PNG plots) of the current labels' run"),
    "score": (
        run_score,
        "label the customers in the features table with the latest saved model (or segment.score_model), "
        "without refitting",
    ),
    "export-scorer": (
        run_export_scorer,
        "write the latest saved model (or segment.score_model) as an mlflow model that scores in plain numpy, "
        "beside it as <model>-scorer (needs custseg[mlflow])",
    ),
    "value": (
        run_value,
        "fit BG/NBD and Gamma-Gamma on the transactions: P(alive), expected purchases and spend, CLV per customer",
    ),
    "export": (
        run_export,
        "send the current segment of each customer whose segment or segment name changed since the last export "
        "to the CRM: an upsert into a PostgreSQL table, or CSV or Parquet files (export.format)",
    ),
    "run": (
        run_all,
        "ingest, features, value (unless value.enabled is false), segment, profile and report in order, "
        "then print the segments",
    ),
    "demo": (run_demo, "generate the demo sources, run everything, and score against the planted truth"),
}


COMPOSITE = ("run", "demo")  # they log each of their stages themselves

# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="custseg",
        description="Customer segmentation on Apache Spark and Delta Lake: raw transactions in, "
        "segment labels in Delta tables out.",
        epilog=f"Without --config, reads conf/base.yaml and conf/${ENV_VAR}.yaml (default: local).",
    )
    p.add_argument("--version", action="version", version=f"custseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in STAGES.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument(
            "--config",
            action="append",
            default=None,
            metavar="FILE",
            help="a YAML config file; repeat to layer (later files override earlier ones)",
        )
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="overrides",
            help="override one key, e.g. --set segment.k_max=6 (repeatable; wins over files)",
        )
        sp.add_argument("--run-id", default=None, help="the id recorded with every output (default: a new one)")
        sp.add_argument("--debug", action="store_true", help="log at DEBUG and show tracebacks")
    return p


def log_config(cfg: Config, files: Sequence[str]) -> None:
    """The effective config, redacted: at INFO only the keys that differ from the first
    file's (conf/base.yaml, where the defaults live), in full at DEBUG (--debug)."""
    try:
        defaults = load_defaults(files[0])
    except ConfigError:  # the first file is not a whole config on its own: nothing to compare with
        defaults = None
    if defaults is not None:
        changed = config_changes(cfg, defaults)
        log.info("effective config, where it differs from %s (--debug shows all): %s", files[0],
                 json.dumps(changed, sort_keys=True, default=str))  # fmt: skip
        log.debug("effective config: %s", json.dumps(redacted(cfg), sort_keys=True))
    else:
        log.info("effective config: %s", json.dumps(redacted(cfg), sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    install_log_redaction()
    logging.captureWarnings(True)  # warnings go through the redacted log too
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        files = [str(f) for f in (args.config or default_configs())]
        cfg = load_config(files, args.overrides)
        run_id = args.run_id or new_run_id()
        log.info("custseg %s %s, run %s", __version__, args.command, run_id)
        log_config(cfg, files)
        if args.command in PREFLIGHT:
            PREFLIGHT[args.command](cfg)
        spark = get_spark(cfg.spark, quiet_tasks=not args.debug)
        with garbage_collected_at_the_end(spark):
            if args.command in COMPOSITE:
                STAGES[args.command][0](spark, cfg, run_id)
            else:
                run_stage(args.command, spark, cfg, run_id)
        return 0
    except USER_ERRORS as exc:
        log.error("%s", exc, exc_info=args.debug)
        return 2
    except Exception as exc:  # the job failed: say so in one line, details on request
        log.error(
            "%s failed: %s: %s",
            args.command,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            exc_info=True,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
