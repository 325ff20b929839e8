"""The shared MLflow tracking server (``server.py``) and moving a local store onto it
(``migrate.py``). Kedro-free; ``make tracking-server`` / ``make tracking-server-stop`` call them."""
