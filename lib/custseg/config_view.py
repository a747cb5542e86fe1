"""What a run's log says of its configuration: the whole of it with every secret masked,
or only the keys that differ from the defaults (``conf/base.yaml``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from custseg import redaction
from custseg.config import Config


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective configuration for logs, with secrets masked (``redact_setting``):
    values of secret-looking keys, values from the environment, and credentials inside
    URLs and connection strings."""

    def walk(obj: Any, key: str) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: walk(getattr(obj, f.name), _dotted(key, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, dict):
            return {k: walk(v, _dotted(key, k)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [walk(v, key) for v in obj]
        if isinstance(obj, dt.date):
            return obj.isoformat()
        return redaction.redact_setting(key, obj)

    return walk(cfg, "")


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def flat(view: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config view as dotted keys: ``{"segment.k": 4, "sources[0].name": "pos"}``.
    Lists of mappings are numbered; other lists are values; an empty mapping has no keys."""
    out: dict[str, Any] = {}
    for key, value in view.items():
        dotted = _dotted(prefix, key)
        if isinstance(value, Mapping):
            out.update(flat(value, dotted))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flat(item, f"{dotted}[{i}]"))
        else:
            out[dotted] = value
    return out


def config_changes(cfg: Config, defaults: Config) -> dict[str, Any]:
    """The keys of ``cfg`` (dotted, redacted) whose value is not the one in ``defaults``
    (``load_defaults``): what a run's log needs to say. The mappings' contents are left
    out: no defaults file holds them, and ``ingest.sources`` names their files."""
    base = flat(redacted(defaults))
    return {
        key: value
        for key, value in flat(redacted(cfg)).items()
        if not key.startswith(("sources", "customers")) and (key not in base or base[key] != value)
    }
