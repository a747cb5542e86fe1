"""Serving: the fitted segmentation as a plain-numpy scorer and an mlflow pyfunc model,
and the segments sent to the CRM (``custseg export``: ``crm``, ``postgres``, ``job``)."""
