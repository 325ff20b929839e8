"""Kedro hooks that are not MLflow: the per-concept lock and progress (the parameter check lives
beside the configs, the tracking hook in ``tracking/``)."""
