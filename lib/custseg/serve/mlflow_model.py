"""The exported mlflow model's code (mlflow's "models from code"): mlflow runs this file
when it loads the model, and ``set_model`` hands it the scorer. Never imported by custseg.

It travels inside the model beside ``custseg_scorer.py``, a copy of
``custseg.serve.scorer``, so that loading needs mlflow, numpy and pandas only, whatever
version of custseg (if any) is installed where the model is served.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

try:
    from custseg_scorer import Scorer, load  # the copy shipped in the model's code/
except ImportError:  # mlflow runs this file once when saving the model too, where custseg is
    from custseg.serve.scorer import Scorer, load


class SegmentScorer(mlflow.pyfunc.PythonModel):
    """Customers' features in, segment ids out (-1: a model feature is missing)."""

    def load_context(self, context) -> None:
        self.scorer: Scorer = load(context.artifacts["scorer"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.scorer.score(model_input)


mlflow.models.set_model(SegmentScorer())
