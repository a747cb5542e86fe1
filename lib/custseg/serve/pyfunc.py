"""The scorer as an mlflow pyfunc model: ``mlflow models serve`` puts it behind HTTP, and
Databricks Model Serving loads the same files (docs/serving.md).

The model is saved as mlflow's "model from code": ``mlflow_model.py`` is its code, a
copy of ``scorer.py`` (as ``custseg_scorer``) travels beside it, and the artefact JSON is
its one artifact. Nothing is pickled, so the model loads under any Python that has
mlflow, numpy and pandas, the only requirements it declares; custseg and Spark are not
needed to serve it. mlflow itself is an optional extra (``pip install 'custseg[mlflow]'``),
imported only here, when a model is written.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from custseg import columns as c
from custseg.serve import scorer

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MODEL_CODE = HERE / "mlflow_model.py"
SCORER_MODULE = "custseg_scorer"  # the scorer's name inside the model: no clash with an installed custseg
ARTEFACT_NAME = "scorer"  # the artifact's key, which mlflow_model.py reads
REQUIREMENTS = ("numpy", "pandas")


class ExportError(RuntimeError):
    """An export the user can fix (mlflow missing, the output folder taken); the message says how."""


class MlflowMissingError(ExportError):
    """mlflow is not installed; the message says how to install it."""


def require_mlflow() -> Any:
    """mlflow, or a clear error: it is an optional extra."""
    try:
        import mlflow
    except ImportError as exc:
        raise MlflowMissingError(
            "exporting the scorer as an mlflow model needs mlflow: pip install 'custseg[mlflow]'"
        ) from exc
    return mlflow


def requirements() -> list[str]:
    """numpy and pandas, pinned to the versions the scorer was exported with (mlflow
    itself is the serving tool's to provide)."""
    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - both are custseg's own requirements
            pins.append(package)
    return pins


def signature(artefact: dict[str, Any]) -> Any:
    """Inputs: every model feature, numeric ones as doubles and categorical ones as text,
    none required (a customer missing one gets -1, as in batch). Output: the segment id."""
    require_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec("double", f["name"], required=False) for f in artefact["numeric"]]
    inputs += [ColSpec("string", f["name"], required=False) for f in artefact["categorical"]]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("long", c.SEGMENT_ID)]))


def input_example(artefact: dict[str, Any]) -> Any:
    """One customer with every model feature (1.0, or the first category): mlflow scores
    it once when saving, which checks that the model loads, and keeps it as the example
    request that Databricks Model Serving shows."""
    import pandas as pd

    row = {f["name"]: 1.0 for f in artefact["numeric"]}
    row.update({f["name"]: (f["labels"] or [""])[0] for f in artefact["categorical"]})
    return pd.DataFrame([row])


def _model_files(artefact: dict[str, Any], work: Path) -> dict[str, Any]:
    """What save_model and log_model both take: the code, its scorer, the artefact."""
    from custseg.serve import artefact as artefacts  # Spark's side, only when exporting

    code = work / f"{SCORER_MODULE}.py"
    shutil.copyfile(HERE / "scorer.py", code)
    return {
        "python_model": str(MODEL_CODE),
        "code_paths": [str(code)],
        "artifacts": {ARTEFACT_NAME: str(artefacts.save(artefact, work / "scorer.json"))},
        "signature": signature(artefact),
        "input_example": input_example(artefact),
        "pip_requirements": requirements(),
        "metadata": {"custseg_model_version": artefact["model_version"], "scorer_format": scorer.FORMAT_VERSION},
    }


def save(artefact: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the mlflow model of ``artefact`` to ``out_dir``, replacing an earlier export
    there (a folder with an MLmodel file); any other existing folder is refused."""
    mlflow = require_mlflow()
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", str(out_dir)):  # s3://, dbfs:/, abfss://: not a folder here
        raise ExportError(f"{out_dir}: a model is written to a local folder; for a model saved on object storage, "
                          "log it to mlflow with custseg.serve.pyfunc.log_model (docs/serving.md)")  # fmt: skip
    out = Path(out_dir)
    if out.exists():
        if not (out / "MLmodel").is_file():
            raise ExportError(f"{out} exists and is not an exported model: choose another folder")
        shutil.rmtree(out)
    try:
        with tempfile.TemporaryDirectory(prefix="custseg-scorer-") as work:
            mlflow.pyfunc.save_model(str(out), **_model_files(artefact, Path(work)))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written model for the next export to refuse
        raise
    log.info("scorer of model %s written as an mlflow model to %s", artefact["model_version"], out)
    return out


def log_model(artefact: dict[str, Any], name: str = "segment-scorer", registered_model_name: str | None = None) -> Any:
    """Log the same model to the active mlflow run (and register it when
    ``registered_model_name`` is given): how it reaches Databricks Model Serving."""
    mlflow = require_mlflow()
    with tempfile.TemporaryDirectory(prefix="custseg-scorer-") as work:
        return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name,
                                       **_model_files(artefact, Path(work)))  # fmt: skip


def export(model_dir: str, out_dir: str | Path, spark: SparkSession | None = None) -> Path:
    """The PipelineModel saved at ``model_dir`` as an mlflow model in ``out_dir``, read
    through ``spark`` (default: the active session, classic or Connect)."""
    from custseg.serve import artefact as artefacts

    require_mlflow()  # before reading the model: fail fast
    session = spark or SparkSession.active()
    return save(artefacts.extract(session, model_dir), out_dir)
