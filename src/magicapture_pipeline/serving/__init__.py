"""The registered concept: the MLflow pyfunc, request limits, portable base model, its life.

``concept_model.ConceptModel`` is what ``mlflow models serve`` and ``mlflow.pyfunc.load_model``
run; ``entry.py`` is its models-from-code file (nothing is unpickled); ``requests`` checks every
request before any work; ``base_model`` keeps the base Stable Diffusion reference portable.
``registration`` and ``promotion`` are the registry's life (register, promote, rollback) and
``registry`` their command line (the only module here that starts a Kedro session). The
``batch_generate``, ``register`` and ``promote`` pipelines call into it.
"""
