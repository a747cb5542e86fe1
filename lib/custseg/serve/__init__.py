"""Serving: the fitted segmentation as a plain-numpy scorer and an mlflow pyfunc model.
``artefact`` reads a saved PipelineModel into JSON; ``scorer`` reproduces it without Spark."""
