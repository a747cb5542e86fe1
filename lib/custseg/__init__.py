"""Customer segmentation on Apache Spark and Delta Lake."""

__version__ = "0.1.0"
