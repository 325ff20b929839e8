"""MLflow tracking: the one module that talks to MLflow (see issue 5). Placeholder until then."""


class MlflowTrackingHook:
    """Logs each `kedro run` as one MLflow run (implemented by the tracking work)."""
