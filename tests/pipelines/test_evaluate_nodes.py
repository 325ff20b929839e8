"""The evaluate node: identity-loss facts for the promotion gate and the tracking summary."""

from __future__ import annotations

import json

import pytest

from magicapture_pipeline.pipelines.evaluate.nodes import evaluate_generated
from magicapture_pipeline.serving.promotion import HELDOUT_PHOTOS
from magicapture_pipeline.tracking.logged import option_tags


@pytest.mark.parametrize("enabled", [False, True])
def test_identity_loss_fact_reaches_metrics_and_the_tracking_summary(tmp_path, enabled):
    (tmp_path / "concept.json").write_text(
        json.dumps({"identity_loss": {"enabled": enabled, "reason": "test"}})
    )
    metrics, _ = evaluate_generated(
        {}, {}, {}, {}, {"items": []}, str(tmp_path), {}, {"clip_model": None, "device": "cpu"}
    )
    assert metrics["identity_loss_trained"] == (1.0 if enabled else 0.0)
    # the count the promotion gates read to choose held-out CSIM (issue 18 §4): no photo here
    assert metrics[HELDOUT_PHOTOS] == 0.0
    # metrics.json is saved last: its summary must not turn an untrained concept "on"
    assert option_tags("metrics", metrics)["magicapture.identity_loss"] == (
        "on" if enabled else "off"
    )
    no_record, _ = evaluate_generated(
        {}, {}, {}, {}, {"items": []}, {"path": str(tmp_path / "none")}, {}, {"clip_model": None}
    )
    assert "identity_loss_trained" in no_record["unavailable"]
