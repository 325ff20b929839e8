"""Everything MLflow for runs, in one place (``serving/`` holds the registered model's life).

``uris`` is the one tracking-URI rule; ``store`` serialises clients of a shared local sqlite
store; ``hook`` is the Kedro hook that logs each ``kedro run`` as one MLflow run, ``logged`` what
that run holds and ``catalog`` the ``mlflow_run`` dataset it hands to the ``register`` node;
``batches`` is what ``make batch`` logs; ``server`` and ``migrate`` run the shared tracking server
(``make tracking-server``) and move a local store onto it. Only ``hook`` imports Kedro.
"""
