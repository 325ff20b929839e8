"""The registered concept's life, and its command line.

* ``serving/registration.py``: the exported concept logged as an MLflow pyfunc inside the training
  run and registered as a new version of ``magicapture-<concept>`` with the alias ``candidate``
  (the ``register`` pipeline);
* ``serving/promotion.py``: ``champion`` moves to a version only when its metric tags pass the
  configured gates; the former champion keeps the alias ``previous`` and ``rollback`` swaps the two
  back (the ``promote`` pipeline);
* ``serving/concept_model.py``: what a registered version runs when it is loaded or served.

Promotion and rollback are also a one-line command::

    kedro run --pipelines=promote --env=demo [--params=model_version=3]
    kedro run --pipelines=promote --env=demo --params=action=rollback
    python -m magicapture_pipeline.serving.registry promote magicapture-demo --env demo \
        [--version 3]
    python -m magicapture_pipeline.serving.registry rollback magicapture-demo

``models:/<name>@champion`` resolves through the tracking URI (``tracking/uris.py``:
``$MLFLOW_TRACKING_URI``, default ``sqlite:///mlflow.db`` in the project root).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.serving.promotion import promote, rollback
from magicapture_pipeline.serving.registration import client_for
from magicapture_pipeline.tracking.uris import resolve_tracking_uri, tracking_section


def main(argv: list[str] | None = None) -> None:
    """``python -m magicapture_pipeline.serving.registry {promote,rollback} MODEL [--version N]``.
    """
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.serving.registry")
    parser.add_argument("action", choices=["promote", "rollback"])
    parser.add_argument("model_name")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--env", default="base", help="Kedro env whose registry gates apply")
    args = parser.parse_args(argv)
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env) as session:
        params = session.load_context().params
    # Kedro 1.7 hands typed parameters (nodes annotated with a pydantic model) over as models
    config = RegistryConfig.model_validate(params.get("registry") or {})
    config = config.model_copy(update={"model_name": args.model_name})
    tracking = tracking_section(params)
    client = client_for(resolve_tracking_uri(project, tracking.get("tracking_uri")))
    result = (
        promote(client, args.model_name, args.version, config)
        if args.action == "promote"
        else rollback(client, args.model_name, config)
    )
    print(json.dumps(result, indent=2))  # noqa: T201 - a command-line answer


if __name__ == "__main__":
    main()
