"""Kedro wiring: a package per pipeline; `pipeline.py` wires, `nodes.py` maps catalog <-> core."""

# The order of the main job.
CUSTOMIZE_CHAIN = (
    "preprocess",
    "train_stage_one",
    "train_stage_two",
    "generate",
    "postprocess",
    "evaluate",
    "register",
)
