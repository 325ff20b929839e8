"""The parameter check reads the sections of every node of a pipeline, not only the first's."""

from __future__ import annotations

import pytest
from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.config.sections import ParameterError
from magicapture_pipeline.hooks.parameter_check import ParameterCheckHook


class _Catalog(dict):
    def load(self, name):
        return self[name]


def test_every_nodes_sections_are_checked_before_any_node():
    ran = []
    pipeline = Pipeline(
        [
            Node(lambda g: ran.append("first") or 1, "params:generation", "a", name="first"),
            Node(lambda a, s: ran.append("second") or 2, ["a", "params:stage_two.lora"], "b",
                 name="second"),  # fmt: skip
            Node(lambda b, s: ran.append("third"), ["b", "params:stage_one"], None, name="third"),
        ]
    )
    parameters = {
        "generation": {"resolution": 64},  # valid: the first node alone would pass
        "stage_two": {"lora": {"rank": -3}},
        "stage_one": {"max_steps": 0},
    }
    with pytest.raises(ParameterError) as caught:
        ParameterCheckHook().before_pipeline_run(
            {"pipeline_names": ["chain"]}, pipeline, _Catalog(parameters=parameters)
        )
    message = str(caught.value)
    assert "params:stage_two.lora.rank = -3" in message
    assert "params:stage_one.max_steps = 0" in message
    assert "params:generation" not in message and not ran
