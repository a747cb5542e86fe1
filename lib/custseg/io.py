"""Every read and write of a Delta table, behind a few functions.

A table is addressed by a ``TableRef``: a path (``storage.mode: path``, the default) or
a catalog name (``storage.mode: catalog``). Callers never branch on which.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from custseg.config import StorageConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableRef:
    name: str
    path: str | None = None  # path mode
    identifier: str | None = None  # catalog mode

    def __str__(self) -> str:
        return self.path or self.identifier or self.name


def resolve(path: str, *parts: str) -> str:
    """A path as Spark should see it: URIs (s3://, dbfs:/, ...) as they are, local paths
    made absolute against this process's working directory (the JVM's may differ)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", path):
        return "/".join([path.rstrip("/"), *parts])
    return str(Path(path, *parts).resolve())


def table_ref(storage: StorageConfig, name: str) -> TableRef:
    if storage.mode == "catalog":
        return TableRef(name=name, identifier=f"{storage.database}.{name}")
    return TableRef(name=name, path=resolve(storage.root, name))


def exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.identifier:
        return spark.catalog.tableExists(ref.identifier)
    return DeltaTable.isDeltaTable(spark, ref.path)


def read(spark: SparkSession, ref: TableRef) -> DataFrame:
    if ref.identifier:
        return spark.read.table(ref.identifier)
    return spark.read.format("delta").load(ref.path)


def delta_table(spark: SparkSession, ref: TableRef) -> DeltaTable:
    if ref.identifier:
        return DeltaTable.forName(spark, ref.identifier)
    return DeltaTable.forPath(spark, ref.path)


def _save(df: DataFrame, ref: TableRef, mode: str, overwrite_schema: bool = False, merge_schema: bool = False) -> None:
    writer = df.write.format("delta").mode(mode)
    if overwrite_schema:
        writer = writer.option("overwriteSchema", "true")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if ref.identifier:
        writer.saveAsTable(ref.identifier)
    else:
        writer.save(ref.path)
    log.info("wrote %s (%s)", ref, mode)


def overwrite(df: DataFrame, ref: TableRef) -> None:
    """Replace the table's contents (and schema) atomically; history stays in the log."""
    _save(df, ref, "overwrite", overwrite_schema=True)


def append(df: DataFrame, ref: TableRef) -> None:
    """Append rows; columns new to the table are added (older rows read them as null)."""
    _save(df, ref, "append", merge_schema=True)


def insert_new(spark: SparkSession, df: DataFrame, ref: TableRef, keys: Sequence[str]) -> None:
    """Insert the rows whose ``keys`` the table does not hold yet (an idempotent load).

    The first load creates the table; later loads MERGE, so rerunning the same input,
    or resuming after a crash part-way, adds nothing twice. ``df`` must be unique on
    ``keys``.
    """
    if not exists(spark, ref):
        _save(df, ref, "errorifexists")
        return
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    # A table written by an older release gains the columns added since (older rows: null).
    merge = delta_table(spark, ref).alias("t").merge(df.alias("s"), condition).withSchemaEvolution()
    merge.whenNotMatchedInsertAll().execute()
    log.info("merged into %s on %s", ref, ", ".join(keys))


def delete_matching(spark: SparkSession, df: DataFrame, ref: TableRef, keys: Sequence[str]) -> None:
    """Delete the table's rows whose ``keys`` appear in ``df`` (no-op if there is no table)."""
    if not exists(spark, ref):
        return
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    delta_table(spark, ref).alias("t").merge(df.alias("s"), condition).whenMatchedDelete().execute()
