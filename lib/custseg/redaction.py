"""Secrets out of everything custseg shows: logs, error messages, the effective config
and mlflow params.

``redact`` is the one function that masks. It masks by value, not by where the text
came from:

* every value the config loader read from the environment (``${ENV_VAR}``, see
  ``remember``), wherever it appears;
* the password of a URL's user info (``https://user:password@host``);
* the value of a credential parameter in a query string or connection string:
  ``?sig=...``, ``;token=...`` (Spark Connect), ``AccountKey=...;`` (Azure),
  ``password=``, ``client_secret=``, ``api_key=``... (a name ending in password,
  passwd, pwd, secret, token, sig, signature, key or credential);
* a bearer token (``Bearer ...``).

A value of fewer than ``MIN_SECRET_LENGTH`` characters from the environment is masked
only where it is a whole config value (``redact_setting``): inside other text it would
mask ordinary numbers and words (a ``${CORES}`` of 2 in every "local[2]"). A URL's
password and a credential parameter are masked whatever their length.

``install_log_redaction`` makes every log record pass through ``redact`` as it is
created, before any handler formats it, so that no handler (a file, a console, a test's
capture) sees a secret, in the message or in a traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 4

_remembered: set[str] = set()

# scheme://user:password@ : the password (an '@' inside it, unescaped, stays in it).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^/?#\s]*)(?=@)")
# name=value in a query string (? &), a connection string (; or the start) or free text.
_CREDENTIAL_PARAM = re.compile(
    r"(?P<head>(?<![\w.-])[\w.-]*(?:password|passwd|pwd|secret|token|sig|signature|key|credential)=['\"]?)"
    r"(?P<secret>[^;&\s'\",}\])]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]+)")
# Config keys whose whole value is a secret: a password, a token, an account key, an
# Azure SAS (spark.hadoop.fs.azure.sas.<container>.<account>.blob.core.windows.net).
SECRET_KEY = re.compile(r"password|passwd|secret|token|credential|key|(^|[._-])sas([._-]|$)", re.IGNORECASE)


def remember(value: str) -> None:
    """Mask ``value`` from now on: it came from the environment (``${ENV_VAR}``)."""
    if value:
        _remembered.add(value)


def redact(text: str) -> str:
    """``text`` with every remembered value and every credential in a URL, query string
    or connection string replaced by ``***``."""
    # Longest first, so that a value containing another is masked whole.
    for value in sorted(_remembered, key=len, reverse=True):
        if len(value) >= MIN_SECRET_LENGTH and value in text:
            text = text.replace(value, MASK)
    for pattern in (_URL_PASSWORD, _CREDENTIAL_PARAM, _BEARER):
        text = pattern.sub(lambda m: m.group("head") + MASK, text)
    return text


def redact_setting(key: str, value: Any) -> Any:
    """A config value as logs may show it: ``***`` when its key names a secret or it is
    a value from the environment, else with ``redact`` applied to its text."""
    if isinstance(value, (dict, list, tuple)):
        raise TypeError(f"{key}: redact_setting takes one value, not a collection")
    if value is None or isinstance(value, bool):
        return value
    if SECRET_KEY.search(key) or (isinstance(value, str) and value in _remembered):
        return MASK
    return redact(value) if isinstance(value, str) else value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message (arguments merged in) and traceback redacted."""
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the format: logging reports it when it formats
        return record
    record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created (idempotent)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(current(*args, **kwargs))

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
