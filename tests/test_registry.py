"""Registry: the concept as a pyfunc, a version with ``candidate``, gated promotion and rollback.

A tiny random SD (``core.models.build_tiny_sd``) and a tiny concept (two random embeddings and a
random LoRA, exported the way diffusers loads them) stand in for a trained one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from conftest import run_kedro
from magicapture_pipeline.config.tracking import PromotionGates, RegistryConfig
from magicapture_pipeline.pipelines.promote.nodes import apply_promotion
from magicapture_pipeline.pipelines.register.nodes import register_concept
from magicapture_pipeline.registry import (
    PromotionRefused,
    decode_image,
    failed_gates,
    promote,
    rollback,
)

MODEL = "magicapture-test"


def build_tiny_concept(folder: Path) -> tuple[Path, Path]:
    """A tiny random SD and a concept for it: ``(base_model_dir, concept_dir)``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from magicapture_pipeline.config.training import TinyModelConfig
    from magicapture_pipeline.core.models import build_tiny_sd

    base = build_tiny_sd(folder / "tiny_sd", TinyModelConfig(sample_size=32))
    pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True, safety_checker=None)
    concept = folder / "concept"
    concept.mkdir()
    torch.manual_seed(0)
    width = pipe.text_encoder.config.hidden_size
    tokens = []
    for token, role in (("<v1>", "person"), ("<v2>", "style")):
        name = f"{token.strip('<>')}.safetensors"
        save_file({token: torch.randn(width)}, concept / name)
        tokens.append({"token": token, "file": name, "role": role})
    pipe.unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    StableDiffusionPipeline.save_lora_weights(
        concept,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
    )
    (concept / "concept.json").write_text(json.dumps({"tokens": tokens}))
    return base, concept


@pytest.fixture(scope="module")
def tiny_concept(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_concept(tmp_path_factory.mktemp("concept"))


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, experiment


def register(store, tiny_concept, csim: float | None) -> dict:
    uri, client, experiment = store
    base, concept = tiny_concept
    run = client.create_run(experiment)
    metrics = {"clip_style": 0.2, "identity_loss_trained": 1.0, "unavailable": {}}
    if csim is None:
        metrics["unavailable"]["csim_arcface"] = "no face found"
    else:
        metrics["csim_arcface"] = csim
    record = register_concept(
        concept,
        {"path": str(base), "tiny": True},
        metrics,
        {"run_id": run.info.run_id, "tracking_uri": uri},
        RegistryConfig(model_name=MODEL, resolution=32, default_steps=2),
    )
    client.set_terminated(run.info.run_id)
    return record


GATES = RegistryConfig(model_name=MODEL, gates=PromotionGates(min_metrics={"csim_arcface": 0.4}))


def aliases(client: MlflowClient) -> dict[str, int]:
    return {a: int(v) for a, v in client.get_registered_model(MODEL).aliases.items()}


def test_gates_name_what_failed():
    gates = PromotionGates(
        required_metrics=["csim"], min_metrics={"csim": 0.4, "style": None}, max_metrics={"fid": 50}
    )
    trained = {"identity_loss_trained": 1.0}
    assert failed_gates({"csim": 0.5, "fid": 10, **trained}, {}, gates) == []
    failures = failed_gates({"csim": 0.1, **trained}, {}, gates)
    assert failures[0] == "gate min_metrics.csim: csim=0.1 < 0.4"
    assert failures[1] == "gate max_metrics.fid: 'fid' is missing"
    assert "unavailable: no face" in failed_gates({}, {"csim": "no face"}, gates)[0]


def test_gate_refuses_a_concept_trained_without_the_identity_loss():
    """base without an ArcFace checkpoint trains without Eq. 7: refused unless overridden."""
    gates = PromotionGates(required_metrics=[], min_metrics={})
    for metrics in ({"identity_loss_trained": 0.0}, {}):
        (failure,) = failed_gates(metrics, {}, gates)
        assert failure.startswith("gate identity_loss:")
        assert "allow_without_identity_loss" in failure
    assert failed_gates({"identity_loss_trained": 1.0}, {}, gates) == []
    override = PromotionGates(required_metrics=[], min_metrics={}, allow_without_identity_loss=True)
    assert failed_gates({"identity_loss_trained": 0.0}, {}, override) == []


def test_register_promote_refuse_rollback(store, tiny_concept):
    uri, client, _ = store
    first = register(store, tiny_concept, csim=0.6)
    assert first["registered"] and first["version"] == 1
    version = client.get_model_version(MODEL, "1")
    assert version.tags["metric.csim_arcface"] == "0.6"
    assert version.tags["base_model"] == str(tiny_concept[0])
    assert aliases(client) == {"candidate": 1}
    run = {"run_id": None, "tracking_uri": uri}
    assert apply_promotion("promote", MODEL, None, GATES, run)["champion"] == 1
    second = register(store, tiny_concept, csim=0.7)
    assert aliases(client) == {"candidate": 2, "champion": 1}
    promote(client, MODEL, second["version"], GATES)
    assert aliases(client) == {"candidate": 2, "champion": 2, "previous": 1}
    bad = register(store, tiny_concept, csim=0.1)
    with pytest.raises(
        PromotionRefused, match=r"min_metrics\.csim_arcface: csim_arcface=0\.1 < 0\.4"
    ):
        promote(client, MODEL, bad["version"], GATES)
    missing = register(store, tiny_concept, csim=None)
    with pytest.raises(PromotionRefused, match="required_metrics: 'csim_arcface' is missing"):
        apply_promotion("promote", MODEL, missing["version"], GATES, run)
    assert aliases(client) == {"candidate": 4, "champion": 2, "previous": 1}
    assert apply_promotion("rollback", MODEL, None, GATES, run)["champion"] == 1
    assert aliases(client) == {"candidate": 4, "champion": 1, "previous": 2}


def test_rollback_without_previous_refuses(store, tiny_concept):
    register(store, tiny_concept, csim=0.6)
    with pytest.raises(PromotionRefused, match="no @previous"):
        rollback(store[1], MODEL, GATES)


def test_not_registered_when_tracking_is_off(tiny_concept):
    record = register_concept(
        tiny_concept[1],
        {"path": "x"},
        {},
        {"run_id": None, "reason": "off"},
        RegistryConfig(model_name=MODEL),
    )
    assert record == {"registered": False, "reason": "off", "model_name": MODEL}


def test_champion_loads_in_a_fresh_process(store, tiny_concept, tmp_path):
    uri, client, _ = store
    promote(client, MODEL, register(store, tiny_concept, csim=0.6)["version"], GATES)
    script = (
        "import mlflow, pandas as pd, sys\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        "out = model.predict(pd.DataFrame({'prompt': ['a photo of [V1] in the style of [V2]'],"
        " 'seed': [3]}))\n"
        "out.to_json(sys.argv[1])\n"
    )
    result = tmp_path / "out.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(
        [sys.executable, "-c", script, str(result)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = pd.read_json(result)
    assert out.loc[0, "prompt"] == "a photo of <v1> in the style of <v2>"
    assert out.loc[0, "seed"] == 3 and out.loc[0, "steps"] == 2
    assert decode_image(out.loc[0, "image"]).size == (32, 32)


@pytest.mark.slow
def test_promote_and_rollback_from_the_command_line(project_copy, tiny_concept):
    uri = f"sqlite:///{project_copy / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(project_copy / "art").as_uri())
    store = (uri, client, experiment)
    register(store, tiny_concept, csim=0.6)
    register(store, tiny_concept, csim=0.1)
    name = f"--params=model_name={MODEL}"
    done = run_kedro(project_copy, "run", "--pipelines=promote", f"{name},model_version=1")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_kedro(project_copy, "run", "--pipelines=promote", f"{name},model_version=2")
    assert done.returncode != 0
    assert "min_metrics.csim_arcface: csim_arcface=0.1 < 0.4" in done.stdout + done.stderr
    assert aliases(client) == {"candidate": 2, "champion": 1}
    experiment = client.get_experiment_by_name("magicapture-my-concept")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    assert "min_metrics.csim_arcface" in runs[1].data.tags["error"]
    assert runs[1].data.tags["kedro.pipelines"] == "promote"
    # the demo env's lenient gates let it through; then one command rolls back
    done = run_kedro(
        project_copy, "run", "--pipelines=promote", "--env=demo", f"{name},model_version=2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert aliases(client) == {"candidate": 2, "champion": 2, "previous": 1}
    done = run_kedro(project_copy, "run", "--pipelines=promote", f"{name},action=rollback")
    assert done.returncode == 0, done.stderr[-3000:]
    assert aliases(client) == {"candidate": 2, "champion": 1, "previous": 2}
    record = json.loads((project_copy / "data/08_reporting/my-concept/promotion.json").read_text())
    assert record["action"] == "rollback" and record["champion"] == 1
    summary = subprocess.run(
        [sys.executable, "-m", "magicapture_pipeline.where_to_look", "--env=demo"],
        cwd=project_copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    ).stdout
    assert "make ui" in summary and "data/08_reporting/demo/promotion.json" in summary
    # the same without Kedro's runner: python -m magicapture_pipeline.registry
    subprocess.run(
        [sys.executable, "-m", "magicapture_pipeline.registry", "rollback", MODEL],
        cwd=project_copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert aliases(client) == {"candidate": 2, "champion": 2, "previous": 1}
