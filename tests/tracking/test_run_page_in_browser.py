"""``scripts/screenshot_run_page.py`` in a real browser (Playwright driving Debian's Chromium)
over a small MLflow store: it passes on a run whose charts and validation images MLflow can show,
its slider screenshots show each step's own image, and it fails on a run whose images/ folder
holds a static file (MLflow's UI then drops every image chart of the run).

Playwright is a pinned project dependency (requirements.txt): without it the test fails, as any
broken install should. Chromium is Debian's (``make test`` installs it when run as root, as CI
is); without it the test says loudly that the page was NOT checked, and skips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script, skip_loudly_without_chromium

RED, BLUE = (220, 0, 0), (0, 0, 220)

pytestmark = [pytest.mark.slow, pytest.mark.service]


def _log_run(client, experiment_id: str, static_image: Path | None = None) -> str:
    from mlflow.entities import LoggedModelOutput

    run_id = client.create_run(experiment_id, run_name="tiny").info.run_id
    for step in range(1, 7):
        client.log_metric(run_id, "stage_two/loss", 1.0 / step, step=step)
        client.log_metric(run_id, "stage_two/loss_recon", 0.5 / step, step=step)
    for step, colour in ((2, RED), (4, BLUE)):
        client.log_metric(run_id, "stage_two_validation/csim_stub_heldout", step / 10, step=step)
        client.log_image(run_id, Image.new("RGB", (96, 96), colour),
                         key="stage_two_validation/grid", step=step)  # fmt: skip
    if static_image is not None:
        client.log_artifact(run_id, str(static_image), "images")  # what the concept card did
    model = client.create_logged_model(experiment_id, name="concept_model", source_run_id=run_id)
    client.finalize_logged_model(model.model_id, "READY")  # a pending model is not listed
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])  # as Model.log records it
    client.set_terminated(run_id)
    return run_id


def _share(path: Path, colour: tuple[int, int, int]) -> float:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    return float((np.abs(pixels - colour).sum(axis=1) < 40).mean())


def test_the_run_page_shows_charts_and_the_step_slider_walks_the_grids(tmp_path, capsys):
    script = load_script("screenshot_run_page")
    assert script.sync_playwright() is not None, "playwright (requirements.txt) is not installed"
    skip_loudly_without_chromium(script, "the MLflow run page")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(
        "magicapture-tiny", artifact_location=(tmp_path / "art").as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )  # fmt: skip
    good = _log_run(client, experiment)
    card = tmp_path / "concept_card.png"
    Image.new("RGB", (8, 8)).save(card)
    broken = _log_run(client, experiment, static_image=card)
    # one mlflow server for both runs (the script's own start_ui, as main uses it over a local
    # store): a second start would cost several CPU seconds more
    process, url = script.start_ui(uri)
    try:
        _check_both(script, url, good, broken, tmp_path, capsys)
    finally:
        script.stop_ui(process)


def _check_both(script, url: str, good: str, broken: str, tmp_path, capsys) -> None:
    out = tmp_path / "shots"
    args = ["--tracking-uri", url, "--experiment", "magicapture-tiny", "--out", str(out)]
    assert script.main([*args, "--run-id", good]) == 0, capsys.readouterr().out
    # each slider position shows its own step's image, not the other's
    for step, colour, other in ((2, RED, BLUE), (4, BLUE, RED)):
        shot = out / f"validation_stage_two_validation_step{step}.png"
        shares = (_share(shot, colour), _share(shot, other))
        assert shares[0] > 0.005 and shares[1] == 0, (step, shares)
    assert (out / "charts_stage_two_loss.png").is_file()
    assert (out / "run_overview.png").is_file()

    capsys.readouterr()
    assert script.main([*args, "--run-id", broken, "--out", str(tmp_path / "broken")]) == 1
    printed = capsys.readouterr().out
    assert "FAILED: model-metrics tab has no image chart stage_two_validation/grid" in printed
