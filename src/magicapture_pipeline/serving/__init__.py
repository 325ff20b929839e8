"""The registered concept in use: the MLflow pyfunc, request limits, portable base model.

``concept_model.ConceptModel`` is what ``mlflow models serve`` and ``mlflow.pyfunc.load_model``
run; ``entry.py`` is its models-from-code file (nothing is unpickled); ``requests`` checks every
request before any work; ``base_model`` keeps the base Stable Diffusion reference portable.
Kedro-free: the ``batch_generate`` pipeline and ``registry.py`` call into it.
"""
