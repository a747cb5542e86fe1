"""The CRM database from Python: credentials from the environment, a bounded connect
check, and the connection that runs the upsert's transaction (psycopg, the optional
``custseg[crm]`` extra). Spark writes the staging table over JDBC; the statements that
must be one transaction run here, on the database, not through Spark's JVM."""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from custseg import redaction
from custseg.config import ConfigError, ExportConfig

log = logging.getLogger(__name__)

DRIVER = "org.postgresql.Driver"


class CrmDatabaseError(RuntimeError):
    """The CRM database cannot be used: unreachable, credentials refused, psycopg missing,
    another export to the same table running. The message says which; never a password."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def credentials(ex: ExportConfig, environ: dict[str, str]) -> Credentials:
    """The user and password from the environment variables the config names; the
    password is masked in every log line and message from now on."""
    missing = [key for key, name in (("user_env", ex.user_env), ("password_env", ex.password_env))
               if not environ.get(name)]  # fmt: skip
    if missing:
        names = ", ".join(f"${getattr(ex, key)} (export.{key})" for key in missing)
        raise ConfigError(f"export: the database credentials come from the environment, and {names} is not set")
    redaction.remember(environ[ex.password_env])
    return Credentials(environ[ex.user_env], environ[ex.password_env])


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    database: str
    sslmode: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


def address(jdbc_url: str) -> Address:
    """Host, port, database (and sslmode, the one parameter libpq shares with the JDBC
    driver) of ``jdbc:postgresql://host[:port]/database[?params]``."""
    parts = urllib.parse.urlsplit(jdbc_url.removeprefix("jdbc:"))
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise ConfigError(f"export.jdbc_url: {redaction.redact(jdbc_url)}: {exc}") from None
    database = parts.path.lstrip("/")
    if not parts.hostname or not database:
        raise ConfigError(
            f"export.jdbc_url: {redaction.redact(jdbc_url)}: expected jdbc:postgresql://host:port/database"
        )
    sslmode = urllib.parse.parse_qs(parts.query).get("sslmode", [None])[0]
    return Address(parts.hostname, port, database, sslmode)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise CrmDatabaseError(
            "export.format jdbc needs psycopg for the upsert's transaction: pip install 'custseg[crm]'"
        ) from None
    return psycopg


def check_reachable(where: Address, timeout: float) -> None:
    """CrmDatabaseError, within ``timeout``, when nothing accepts a TCP connection at the
    database's host and port (the JDBC driver and libpq would each wait longer)."""
    try:
        with socket.create_connection((where.host, where.port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
    raise CrmDatabaseError(
        f"CRM database {where} (export.jdbc_url) is not reachable within {timeout:g} s ({reason}): check that the "
        "database is running and that the URL names its host and port"
    )


@contextlib.contextmanager
def connect(where: Address, creds: Credentials, timeout: float) -> Iterator[Any]:
    """An autocommit connection (each statement its own transaction, unless inside
    ``connection.transaction()``), closed at the end; a refusal is CrmDatabaseError."""
    psycopg = _psycopg()
    check_reachable(where, timeout)
    options = {"sslmode": where.sslmode} if where.sslmode else {}
    try:
        connection = psycopg.connect(
            host=where.host, port=where.port, dbname=where.database, user=creds.user, password=creds.password,
            connect_timeout=max(2, round(timeout)), autocommit=True, application_name="custseg export", **options,
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        raise CrmDatabaseError(f"CRM database {where}: {redaction.redact(reason)}") from None
    try:
        yield connection
    finally:
        connection.close()


def lock_table(connection: Any, table: str) -> None:
    """Hold the session's advisory lock of ``table`` until the connection closes (a
    killed process's too: the server drops it with the connection), so that two
    exports never share its staging table; CrmDatabaseError when another holds it."""
    key = zlib.crc32(f"custseg export {table}".encode())
    if not connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        raise CrmDatabaseError(f"another export to {table} is running: run again once it is done")
