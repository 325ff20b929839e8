"""The MagiCapture method, importable without Kedro or MLflow, in folders that follow the data:

``faces/`` (photos to crops, masks and a validated set) -> ``models/`` (the base model, tokens,
attention capture) -> ``training/`` (stage one and two, Eq. 4-8 wiring, checkpoints) ->
``generation/`` (sampling, the exported concept, post-processing) -> ``evaluation/`` (metrics,
protocol, baselines). ``identity/`` holds the face recognizers and the ArcFace of Eq. 7;
``losses.py`` (one function per paper equation) and ``atomic.py`` sit at the bottom.
"""
