"""Reading a raw source and mapping it onto the canonical transaction schema.

A source is described by a mapping file in ``conf/sources/`` (see ``SourceConfig``);
no code changes to onboard one. Every input row comes out of ``canonicalize`` with
either ``reason`` null (accepted) or a reason code (to be quarantined), together with
the original row, so nothing is ever dropped silently.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Sequence

from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, StringType, StructField, StructType

from custseg import columns as c
from custseg.config import SourceConfig
from custseg.io import resolve

log = logging.getLogger(__name__)

RAW = "raw"  # the original source row: the line as read, or the record as JSON
SOURCE_FILE = "source_file"  # the file a row was read from
REASON = "reason"  # why a row is quarantined; null when it is accepted
CONTENT_ID = "content_id"  # hash of the source and the original row
MALFORMED = "_corrupt_record"  # Spark's column for lines that do not parse

# Reason codes, in the order they are checked: a row gets the first that applies.
MALFORMED_ROW = "malformed_row"
INVALID_ENCODING = "invalid_encoding"
MISSING_CUSTOMER_ID = "missing_customer_id"
MISSING_INVOICE_ID = "missing_invoice_id"
BAD_QUANTITY = "unparseable_quantity"
BAD_UNIT_PRICE = "unparseable_unit_price"
BAD_LINE_AMOUNT = "unparseable_line_amount"
BAD_TIMESTAMP = "unparseable_timestamp"
NON_FINITE_NUMBER = "non_finite_number"
ZERO_QUANTITY = "zero_quantity"
NON_POSITIVE_PRICE = "non_positive_price"
FUTURE_TIMESTAMP = "future_timestamp"

_ITEM = "item"
_ITEM_INDEX = "item_index"
REPLACEMENT_CHAR = "\ufffd"  # what a decoder puts where bytes are not valid in the encoding


class SourceError(RuntimeError):
    """A source cannot be read as configured; the message names the source and its file."""


# --------------------------------------------------------------------------- reading


def read_source(spark: SparkSession, src: SourceConfig) -> DataFrame | None:
    """The raw rows with every primitive as text, so bad values reach validation, plus
    ``source_file`` and, for text formats, ``_corrupt_record`` for lines that do not
    parse. None when the source's files hold no data at all (e.g. an empty export)."""
    path = resolve(src.path)
    try:
        if src.format == "csv":
            df = _read_csv(spark, src, path)
        elif src.format == "whitespace":
            df = _read_whitespace(spark, src, path)
        else:
            reader = spark.read.format(src.format).options(**src.options)
            if src.format == "json":
                reader = reader.option("primitivesAsString", "true").option("columnNameOfCorruptRecord", MALFORMED)
            df = reader.load(path)
            if src.format == "json" and isinstance(src, SourceConfig):  # not a customer table's mapping
                df = _json_in_mapped_shapes(df, src, reader, path)
        if df is not None:
            df.schema  # noqa: B018 - resolve the schema now, so a bad path fails here
    except AnalysisException as exc:
        if exc.getCondition() == "UNABLE_TO_INFER_SCHEMA":  # Spark found no file to infer a schema from
            raise _no_files(src, path) from None
        raise SourceError(f"source '{src.name}' ({src.file}): cannot read {src.path}: {_first_line(exc)}") from None
    if df is None or not df.columns:
        log.warning("source %s: no data in %s (empty files?)", src.name, src.path)
        return None
    if df.columns == [MALFORMED]:
        raise SourceError(
            f"source '{src.name}' ({src.file}): no line of {src.path} parses as {src.format}; "
            "JSON sources must hold one object per line (for pretty-printed files or arrays set "
            'options.multiLine: "true")'
        )
    text = [
        F.col(f"`{name}`") if name == src.explode or src.format not in ("parquet", "delta")
        else F.col(f"`{name}`").cast("string").alias(name)
        for name in df.columns if name != SOURCE_FILE
    ]  # fmt: skip
    file_path = F.col(SOURCE_FILE) if SOURCE_FILE in df.columns else F.col("_metadata.file_path").alias(SOURCE_FILE)
    return df.select(*text, file_path)


def _json_in_mapped_shapes(df: DataFrame, src: SourceConfig, reader: DataFrameReader, path: str) -> DataFrame:
    """The JSON source read again with an object or array type for each top-level field
    that Spark inferred as text because records disagree on its shape (``"customer":
    "206"`` beside ``"customer": {"id": ...}``), when the mapping needs it so.

    Spark's inference makes such a field a string, and then ``customer.id`` does not
    resolve, or ``items`` cannot be exploded: one bad record would block the source. Read
    with the field's object (or array) type instead, the records of another shape become
    corrupt records, kept whole and quarantined as ``malformed_row``. The types come from
    the records that have the shape (``schema_of_variant_agg``), every primitive as text
    as in the first read. Only when the mapping does not resolve: one more pass."""
    if df.columns == [MALFORMED] or _mapping_error(df, src) is None:
        return df
    texts = [f.name for f in df.schema.fields if f.name != MALFORMED and isinstance(f.dataType, StringType)]
    # An array of text: its elements disagree (``"items": ["X"]`` beside ``[{"sku": ...}]``).
    lists = [
        f.name for f in df.schema.fields
        if isinstance(f.dataType, ArrayType) and isinstance(f.dataType.elementType, StringType)
    ]  # fmt: skip
    if not texts and not lists:
        return df
    types: dict[str, DataType] = {}
    if texts:
        shapes = df.select(
            *[_shape_schema(name, kind).alias(f"{kind}:{name}") for name in texts for kind in ("OBJECT", "ARRAY")]
        ).first()  # one row
        for name in texts:
            as_object, as_array = (shapes[f"{kind}:{name}"] for kind in ("OBJECT", "ARRAY"))
            shape = (as_array or as_object) if name == src.explode else (as_object or as_array)
            if shape:
                types[name] = _text_type(shape)
    for name in lists:
        elements = df.select(F.explode(F.col(f"`{name}`")).alias("_element"))
        shape = elements.select(_shape_schema("_element", "OBJECT")).first()[0]  # one row
        if shape:
            types[name] = ArrayType(_text_type(shape))

    def read(reshaped: dict[str, DataType]) -> DataFrame:
        fields = [
            StructField(f.name, reshaped.get(f.name, f.dataType)) for f in df.schema.fields if f.name != MALFORMED
        ]
        return reader.schema(StructType([*fields, StructField(MALFORMED, StringType())])).load(path)

    # Only the fields the mapping needs in their shape: a record is not quarantined for
    # the shape of a field nothing reads.
    for name in list(types):
        fewer = {k: v for k, v in types.items() if k != name}
        if _mapping_error(read(fewer), src) is None:
            types = fewer
    if not types:
        return df
    log.info("source %s: %s read as object or array; records of another shape are quarantined", src.name, list(types))
    return read(types)


def _shape_schema(name: str, kind: str) -> Column:
    """The merged schema (a variant schema string) of the values of ``name`` that are of
    ``kind`` (OBJECT or ARRAY); null or VOID when none is. A text field holds an object
    or array value as its JSON text."""
    value = F.try_parse_json(F.col(f"`{name}`"))
    schema = F.schema_of_variant_agg(F.when(F.schema_of_variant(value).startswith(kind), value))
    return F.when(schema != "VOID", schema)


_VARIANT_TYPE = re.compile(r"\s*(OBJECT<|ARRAY<|`(?:[^`]|``)*`|[A-Za-z_][A-Za-z0-9_]*(?:\(\d+,\s*\d+\))?)\s*")


def _text_type(schema: str) -> DataType:
    """A variant schema string (``OBJECT<id: BIGINT, tags: ARRAY<STRING>>``) as a Spark
    type with every primitive as text: structs for objects, arrays for arrays."""

    def parse(at: int) -> tuple[DataType, int]:
        token = _VARIANT_TYPE.match(schema, at)
        if token is None:
            raise ValueError(f"unexpected variant schema at {at}: {schema}")
        at = token.end()
        if token.group(1) == "ARRAY<":
            element, at = parse(at)
            return ArrayType(element), _expect(">", at)
        if token.group(1) != "OBJECT<":
            return StringType(), at  # every primitive, and VARIANT where records disagree
        fields = []
        while schema[at] != ">":
            name = _VARIANT_TYPE.match(schema, at)
            key = name.group(1)
            key = key[1:-1].replace("``", "`") if key.startswith("`") else key
            value, at = parse(_expect(":", name.end()))
            fields.append(StructField(key, value))
            if schema[at] == ",":
                at += 1
            while schema[at] == " ":
                at += 1
        return StructType(fields), at + 1

    def _expect(char: str, at: int) -> int:
        while schema[at] == " ":
            at += 1
        if schema[at] != char:
            raise ValueError(f"expected '{char}' at {at}: {schema}")
        return at + 1

    return parse(0)[0]


def _no_files(src: SourceConfig, path: str) -> SourceError:
    return SourceError(
        f"source '{src.name}' ({src.file}): path: {path} holds no files (Spark skips names that start with "
        f"'_' or '.'); check the path, or put the source's files there"
    )


def _read_csv(spark: SparkSession, src: SourceConfig, path: str) -> DataFrame | None:
    # The header names come from a first, header-only read; the second read declares
    # them as strings plus a corrupt-record column, so a line with too few or too many
    # fields is kept and quarantined instead of being padded or truncated in silence.
    reader = spark.read.options(**src.options)
    names = reader.csv(path).columns
    if not names:
        return None
    if not is_text(",".join(names)):
        # Spark takes the header from one file, the largest: name it, print none of its bytes.
        first = spark.read.text(path).select(F.col("_metadata.file_path")).first()
        raise _not_text(src, first[0] if first else path)
    schema = StructType([StructField(n, StringType()) for n in names] + [StructField(MALFORMED, StringType())])
    return (
        reader.schema(schema)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", MALFORMED)
        # Check every file's header against the names: files whose columns are in another
        # order fail loudly instead of being mapped by position.
        .option("enforceSchema", "false")
        .csv(path)
    )


def is_text(line: str) -> bool:
    """False for what a binary file, or one in another encoding, decodes to: a character
    the decoder could not map, or a control character other than a tab."""
    return not any(ch == REPLACEMENT_CHAR or (unicodedata.category(ch) == "Cc" and ch != "\t") for ch in line)


def _shown(file: str) -> str:
    """A file as messages name it: a local path without Spark's ``file:`` or ``file://``."""
    parsed = urllib.parse.urlparse(file)
    return urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else file


def _not_text(src: SourceConfig, file: str) -> SourceError:
    encoding = src.options.get("encoding", "UTF-8")
    return SourceError(
        f"source '{src.name}' ({src.file}): {_shown(file)} is not a text file in {encoding} (its first line holds "
        "undecodable bytes or control characters: a binary file?); move it out of the source's path, or set "
        "options.encoding"
    )


_CSV_FILE = re.compile(r"CSV file: (\S+)")
_EXPECTED = re.compile(r"Expected: (.*?) but found: (.*)")


def csv_file_error(spark: SparkSession, exc: Exception, sources: Sequence[SourceConfig]) -> SourceError | None:
    """Spark's failure to read a CSV file whose header is not the source's (checked for
    every file, ``enforceSchema: false``) as one line naming the file: not text (a binary
    file), or columns in another order, missing or extra. None for any other failure."""
    message = str(exc)
    found = _CSV_FILE.search(message)
    if "CSV header" not in message or found is None:
        return None
    file = found.group(1)
    local = _shown(file)
    candidates = [s for s in sources if s.format == "csv"]
    src = next((s for s in candidates if local.startswith(resolve(s.path))), candidates[0] if candidates else None)
    if src is None:
        return None
    options = {**src.options, "header": "false"}
    first = spark.read.options(**options).csv(file).first()  # the file's header line, as fields
    if first is not None and not is_text(",".join(v or "" for v in first)):
        return _not_text(src, file)
    expected = _EXPECTED.search(message)
    detail = f": expected {_printable(expected.group(1))}, found {_printable(expected.group(2))}" if expected else ""
    return SourceError(
        f"source '{src.name}' ({src.file}): {local}: its header is not the source's (columns in another order, "
        f"missing or extra){detail}; every file of a source must have the same header"
    )


def _printable(text: str, limit: int = 80) -> str:
    shown = "".join(ch if ch.isprintable() and ch != REPLACEMENT_CHAR else "?" for ch in text.strip())
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _read_whitespace(spark: SparkSession, src: SourceConfig, path: str) -> DataFrame | None:
    """Columns separated by runs of spaces or tabs, with a header line in every file, or
    none and the mapping's ``names`` (legacy exports often have no header)."""
    lines = spark.read.options(**{k: v for k, v in src.options.items() if k != "header"}).text(path)
    stripped = F.regexp_replace("value", r"^\s+|\s+$", "")  # trim() strips spaces only, not tabs
    first = lines.where(stripped != "").first()
    if first is None:
        if not lines.inputFiles():
            raise _no_files(src, path)
        return None
    names = list(src.names) or first["value"].split()
    tokens = F.split(stripped, r"\s+")
    is_header = F.lit(False) if src.names else tokens == F.array(*[F.lit(n) for n in names])
    well_formed = F.size(tokens) == len(names)
    return lines.where((stripped != "") & ~is_header).select(
        *[F.when(well_formed, F.get(tokens, i)).alias(name) for i, name in enumerate(names)],
        F.when(~well_formed, F.col("value")).alias(MALFORMED),
        F.col("_metadata.file_path").alias(SOURCE_FILE),
    )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_mapping(df: DataFrame, src: SourceConfig) -> None:
    """Resolve every mapped expression against the source's schema before any data is
    processed; a wrong column name fails here, naming the mapping file and key."""
    error = _mapping_error(df, src)
    if error is not None:
        raise error
    for i, fmt in enumerate(src.timestamp_formats):
        # A bad pattern only fails when a value is parsed: try it on one literal now.
        probe = df.sparkSession.range(1).select(F.try_to_timestamp(F.lit("2000-01-01"), F.lit(fmt)))
        try:
            probe.collect()
        except PySparkException as exc:
            raise SourceError(
                f"{src.file}: timestamp_formats[{i}]: '{fmt}' is not a valid pattern: {_first_line(exc)}"
            ) from None


def _mapping_error(df: DataFrame, src: SourceConfig) -> SourceError | None:
    """What does not resolve in the mapping against ``df``'s schema (reading no data), or None."""
    if src.explode and src.explode not in df.columns:
        return SourceError(f"{src.file}: explode: no column '{src.explode}' in {_data_columns(df)}")
    if src.explode and not isinstance(df.schema[src.explode].dataType, ArrayType):
        return SourceError(
            f"{src.file}: explode: '{src.explode}' is not an array in any record "
            f"(it is {df.schema[src.explode].dataType.simpleString()})"
        )
    rows = _exploded(df, src)
    checks = {f"columns.{k}": v for k, v in vars(src.columns).items() if v is not None}
    checks |= {"return_when": src.return_when, "void_when": src.void_when, "non_product_when": src.non_product_when}
    for key, expr in checks.items():
        try:
            resolved = rows.select(_mapped(expr, rows.columns)).schema.fields[0]  # analysis only, reads no data
        except PySparkException as exc:
            return SourceError(
                f"{src.file}: {key}: cannot resolve '{expr}' against the columns {_data_columns(df)}: "
                f"{_first_line(exc)}"
            )
        if key.endswith("_when") and resolved.dataType.typeName() != "boolean":
            return SourceError(
                f"{src.file}: {key}: '{expr}' is not a true/false condition "
                f"(it gives {resolved.dataType.simpleString()})"
            )
    return None


def check_columns(df: DataFrame, file: str, mapping: dict[str, str]) -> None:
    """Resolve each mapped column or expression (key -> expression) against ``df``'s
    schema, reading no data; a wrong name fails naming the mapping file and key."""
    for key, expr in mapping.items():
        try:
            df.select(_mapped(expr, df.columns)).schema  # noqa: B018 - analysis only
        except PySparkException as exc:
            raise SourceError(
                f"{file}: {key}: cannot resolve '{expr}' against the columns {_data_columns(df)}: {_first_line(exc)}"
            ) from None


def _data_columns(df: DataFrame) -> list[str]:
    return sorted(n for n in df.columns if n not in (MALFORMED, SOURCE_FILE))


def _exploded(df: DataFrame, src: SourceConfig) -> DataFrame:
    """One row per element of the ``explode`` array, as ``item``, with its position as
    ``item_index`` (so two identical items of one order stay two lines)."""
    if not src.explode:
        return df
    kept = [F.col(f"`{n}`") for n in df.columns if n != src.explode]
    return df.select(*kept, F.posexplode_outer(F.col(f"`{src.explode}`")).alias(_ITEM_INDEX, _ITEM))


# --------------------------------------------------------------------------- mapping


def canonicalize(
    src: SourceConfig, now: dt.datetime, quarantine_future: bool = True
) -> Callable[[DataFrame], DataFrame]:
    """Raw source rows -> canonical rows with a quarantine reason.

    Input: the output of ``read_source``.
    Output columns: content_id, source, customer_id, invoice_id, line_id, product_id,
    quantity, unit_price, amount, event_ts, store, channel, txn_type, source_file, raw,
    reason.

    * ``content_id`` hashes the source and the whole original row: an exact duplicate
      line has the same id, and so does the same line read again in a later run.
    * ``txn_type``: ``void`` (void_when), ``adjustment`` (non_product_when), ``return``
      (return_when, a negative quantity or a negative line amount) or ``purchase``. Returns get a negative
      quantity and amount whatever sign the source uses; voids have amount 0;
      adjustments keep the sign the source gives them.
    * ``amount`` is the line amount when mapped, else quantity x unit price; a missing
      unit price is derived from it.
    * ``now`` bounds timestamps: a later transaction is quarantined when
      ``quarantine_future``.
    """

    def transform(df: DataFrame) -> DataFrame:
        rows = _exploded(df, src)
        raw, malformed = original_row(rows)
        # In steps, each value computed once and named: a value used in several places
        # (the quantity is in the type, the amount, the reason...) would otherwise be
        # parsed again at each, and Spark keeps such steps apart rather than inline them.
        mapped = rows.select(
            *[mapped_text(expr, rows.columns).alias(f"_text_{name}") for name, expr in vars(src.columns).items()],
            F.coalesce(F.expr(src.void_when), F.lit(False)).alias("_is_void"),
            F.coalesce(F.expr(src.non_product_when), F.lit(False)).alias("_is_adjustment"),
            F.coalesce(F.expr(src.return_when), F.lit(False)).alias("_return_when"),
            raw.alias(RAW),
            malformed.alias("_malformed"),
            F.col(SOURCE_FILE),
        )

        def text(name: str) -> Column:
            return F.col(f"_text_{name}")

        parsed = mapped.select(
            "*",
            text("quantity").try_cast("double").alias("_quantity"),
            text("unit_price").try_cast("double").alias("_stated_price"),
            text("line_amount").try_cast("double").alias("_stated_amount"),
            _parse_timestamp(text("event_ts"), src).alias("_event_ts"),
        )
        quantity, stated_price, stated_amount = F.col("_quantity"), F.col("_stated_price"), F.col("_stated_amount")
        is_return = F.col("_return_when") | (quantity < 0) | F.coalesce(stated_amount < 0, F.lit(False))
        typed = parsed.select(
            "*",
            F.abs(F.coalesce(stated_amount, quantity * stated_price)).alias("_line_value"),
            F.coalesce(stated_price, F.abs(stated_amount / F.nullif(quantity, F.lit(0.0)))).alias("_unit_price"),
            F.when(F.col("_is_void"), c.VOID)
            .when(F.col("_is_adjustment"), c.ADJUSTMENT)
            .when(is_return, c.RETURN)
            .otherwise(c.PURCHASE)
            .alias("_txn_type"),
        )
        line_value, unit_price, txn_type = F.col("_line_value"), F.col("_unit_price"), F.col("_txn_type")
        event_ts = F.col("_event_ts")
        amount = (
            F.when(txn_type == c.PURCHASE, line_value)
            .when(txn_type == c.RETURN, -line_value)
            .when(txn_type == c.ADJUSTMENT, F.coalesce(stated_amount, quantity * stated_price))
            .otherwise(F.lit(0.0))
        )
        unparseable = {
            BAD_QUANTITY: ("quantity", quantity), BAD_UNIT_PRICE: ("unit_price", stated_price),
            BAD_LINE_AMOUNT: ("line_amount", stated_amount),
        }  # fmt: skip
        reason = F.when(F.col("_malformed"), MALFORMED_ROW)
        reason = reason.when(F.col(RAW).contains(REPLACEMENT_CHAR), INVALID_ENCODING)
        reason = reason.when(text("customer_id").isNull(), MISSING_CUSTOMER_ID)
        reason = reason.when(text("invoice_id").isNull(), MISSING_INVOICE_ID)
        for code, (name, value) in unparseable.items():
            reason = reason.when(text(name).isNotNull() & value.isNull(), code)
        reason = (
            reason.when(quantity.isNull(), BAD_QUANTITY)
            .when(unit_price.isNull() & stated_amount.isNull(), BAD_UNIT_PRICE)
            .when(event_ts.isNull(), BAD_TIMESTAMP)
            .when(~finite(quantity) | ~finite(F.coalesce(unit_price, F.lit(0.0))) | ~finite(line_value),
                  NON_FINITE_NUMBER)
            .when(quantity == 0, ZERO_QUANTITY)
            .when((txn_type != c.ADJUSTMENT) & (F.coalesce(unit_price, F.lit(0.0)) <= 0), NON_POSITIVE_PRICE)
        )  # fmt: skip
        if quarantine_future:
            reason = reason.when(event_ts > F.lit(now), FUTURE_TIMESTAMP)

        return typed.select(
            F.sha2(F.concat_ws("\u0001", F.lit(src.name), F.col(RAW)), 256).alias(CONTENT_ID),
            F.lit(src.name).alias(c.SOURCE),
            text("customer_id").alias(c.CUSTOMER_ID),
            text("invoice_id").alias(c.INVOICE_ID),
            text("line_id").alias(c.LINE_ID),
            text("product_id").alias(c.PRODUCT_ID),
            F.when(txn_type == c.RETURN, -F.abs(quantity)).otherwise(quantity).alias(c.QUANTITY),
            F.round(unit_price, 4).alias(c.UNIT_PRICE),
            F.round(amount, 2).alias(c.AMOUNT),
            event_ts.alias(c.EVENT_TS),
            text("store").alias(c.STORE),
            F.lit(src.channel or src.name).alias(c.CHANNEL),
            txn_type.alias(c.TXN_TYPE),
            F.col(SOURCE_FILE),
            F.col(RAW),
            reason.alias(REASON),
        )

    return transform


def original_row(rows: DataFrame) -> tuple[Column, Column]:
    """The row as it came: the unparsed line for a malformed one, else the record as
    JSON; and whether it is malformed (a line the reader could not split into fields)."""
    original = [F.col(f"`{n}`") for n in rows.columns if n not in (SOURCE_FILE, MALFORMED)]
    raw = F.to_json(F.struct(*original))
    if MALFORMED not in rows.columns:
        return raw, F.lit(False)
    return F.coalesce(F.col(MALFORMED), raw), F.col(MALFORMED).isNotNull()


def _mapped(expr: str, columns: Sequence[str]) -> Column:
    """A column named exactly as written (``Customer ID``), else a SQL expression."""
    return F.col(f"`{expr}`") if expr in columns else F.expr(expr)


def mapped_text(expr: str | None, columns: Sequence[str]) -> Column:
    """A mapped value as trimmed text; blank is null."""
    if expr is None:
        return F.lit(None).cast("string")
    value = F.trim(_mapped(expr, columns).cast("string"))
    return F.when(value != "", value)


def finite(x: Column) -> Column:
    """ "NaN" and "Infinity" parse as doubles; as money they are errors."""
    return ~F.isnan(x) & (F.abs(x) != F.lit(float("inf")))


def _parse_timestamp(text: Column, src: SourceConfig) -> Column:
    if not src.timestamp_formats:
        # ISO 8601: an explicit offset or zone wins; a bare local time is in the source's zone.
        iso = F.upper(text)  # RFC 3339 allows a lower-case t and z; Spark reads upper case
        has_offset = iso.rlike(r"(Z|[+-]\d\d(:?\d\d)?|\s?(UTC|GMT))$")
        parsed = F.try_to_timestamp(iso)
        return F.when(has_offset, parsed).otherwise(F.to_utc_timestamp(parsed, src.timezone))
    # Patterns are tried in order; the first that parses the whole text wins.
    local = F.coalesce(*[F.try_to_timestamp(text, F.lit(fmt)) for fmt in src.timestamp_formats])
    return F.to_utc_timestamp(local, src.timezone)
