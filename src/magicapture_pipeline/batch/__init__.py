"""Batches of concepts: ``python -m magicapture_pipeline.batch MANIFEST`` (``make batch``).

Each concept of a manifest runs as its own Kedro session (``customize``) in its own process, on a
local process pool (``--engine=local``) or as Ray tasks (``--engine=ray``: an embedded local Ray by
default, a cluster with ``--address``/``RAY_ADDRESS``). The pipelines know nothing of batches: the
batch layer schedules sessions, retries dead workers (which resume from their checkpoints), shows a
live table and writes a summary (``data/08_reporting/batch/<batch-id>.json``, also an MLflow run in
the experiment ``magicapture-batches``).

* :mod:`.manifest`: the typed manifest (YAML or CSV);
* :mod:`.worker`: one concept's session, in whatever process runs it;
* :mod:`.engines`: the local pool and the Ray engine;
* :mod:`.summary`: the live table, the summary file and its MLflow run;
* :mod:`.cli`: the command line.
"""
