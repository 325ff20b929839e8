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

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from conftest import run_kedro, run_kedro_here
from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.config.tracking import PromotionGates, RegistryConfig
from magicapture_pipeline.pipelines.promote.nodes import apply_promotion
from magicapture_pipeline.pipelines.register.nodes import register_concept
from magicapture_pipeline.serving.concept_model import decode_image
from magicapture_pipeline.serving.promotion import (
    PromotionRefused,
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

    from magicapture_pipeline.config.model import TinyModelConfig
    from magicapture_pipeline.core.models.builders import build_tiny_sd

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


def tiny_concept_in(folder: Path, tmp_path_factory) -> tuple[Path, Path]:
    """:func:`build_tiny_concept`'s ``(base_model_dir, concept_dir)``, copied into ``folder``
    from one build per test run (shared by the xdist workers under a file lock, like
    ``conftest.tiny_sd``): the registry, scoring-server, migration and gallery tests each built
    the same seeded files."""
    import fcntl
    import os
    import shutil

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    cache = root / "tiny_concept"
    cache.mkdir(exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "built" / "concept" / "concept.json").is_file():
            shutil.rmtree(cache / "building", ignore_errors=True)
            (cache / "building").mkdir()
            build_tiny_concept(cache / "building")
            (cache / "building").rename(cache / "built")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tiny_sd", "concept"):
        shutil.copytree(cache / "built" / name, folder / name)
    return folder / "tiny_sd", folder / "concept"


@pytest.fixture(scope="module")
def tiny_concept(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_concept_in(tmp_path_factory.mktemp("concept"), tmp_path_factory)


@pytest.fixture
def store(tmp_path: Path, sqlite_store) -> tuple[str, MlflowClient]:
    uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, experiment


def register(store, tiny_concept, csim: float | None, gallery_prompts: int = 0) -> dict:
    """Register ``tiny_concept`` as a new version with ``csim`` (None: unavailable). No gallery
    unless ``gallery_prompts`` says so: sampling every version again at each registration is
    what ``test_gallery`` checks, and cost the other tests seconds per version."""
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
        {"run_id": run.info.run_id, "tracking_uri": uri, "project_path": str(base.parent)},
        RegistryConfig(model_name=MODEL, gallery_prompts=gallery_prompts),
        SAMPLING,
        ServingConfig(),
    )
    client.set_terminated(run.info.run_id)
    return record


# What the generate pipeline would use on the tiny model; the registered model must sample the same.
SAMPLING = GenerationConfig(resolution=32, num_inference_steps=2, seed=11, concept_name="test")
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


def test_identity_gates_read_heldout_csim_when_a_photo_was_held_out():
    """Issue 18 §4: high CSIM on the training photos (0.9) and low on the held-out photo (0.3):
    with a held-out photo the gate reads the held-out CSIM and refuses, saying so; without one it
    reads the training photos and says that instead."""
    from magicapture_pipeline.serving.promotion import gate_readings

    gates = PromotionGates()  # the shipped gates: csim_arcface required and >= 0.4
    scores = {"csim_arcface": 0.9, "csim_arcface_heldout": 0.3, "identity_loss_trained": 1.0}
    held = {**scores, "heldout_photos": 1.0}
    (failure,) = failed_gates(held, {}, gates)
    assert failure == (
        "gate min_metrics.csim_arcface: csim_arcface_heldout=0.3 < 0.4 [held-out photos]"
    )
    assert gate_readings(held, gates)["csim_arcface"] == "csim_arcface_heldout (held-out photos)"
    none_held = {**scores, "heldout_photos": 0.0}
    assert failed_gates(none_held, {}, gates) == []
    assert "training photos" in gate_readings(none_held, gates)["csim_arcface"]
    # a held-out photo whose CSIM could not be scored fails the gate; no fallback to training
    (missing,) = [f for f in failed_gates(
        {"csim_arcface": 0.9, "heldout_photos": 1.0, "identity_loss_trained": 1.0},
        {"csim_arcface_heldout": "no face found in any generated image"}, gates,
    ) if f.startswith("gate required")]
    assert "'csim_arcface_heldout' is missing (unavailable: no face found" in missing
    off = PromotionGates(identity_from_heldout=False)
    assert failed_gates(held, {}, off) == []


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
    # portable: relative to the project root, not this machine's absolute path
    assert version.tags["base_model"] == "tiny_sd"
    assert version.tags["base_model_kind"] == "project_path"
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
    tags = client.get_model_version(MODEL, str(missing["version"])).tags
    assert tags["unavailable"] == "csim_arcface"  # one short tag, no reason text on the version
    assert not any(k.startswith("unavailable.") for k in tags)
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
        GenerationConfig(),
        ServingConfig(),
    )
    assert record == {"registered": False, "reason": "off", "model_name": MODEL}


def test_version_is_a_logged_model_of_the_run(store, tiny_concept):
    uri, client, experiment = store
    record = register(store, tiny_concept, csim=0.6)
    version = client.get_model_version(MODEL, str(record["version"]))
    models = client.search_logged_models(experiment_ids=[experiment])
    assert [m.model_id for m in models] == [record["model_id"]]
    assert version.source == f"models:/{record['model_id']}" == record["source"]
    assert models[0].source_run_id == record["run_id"] and models[0].name == "concept_model"
    assert str(models[0].status).endswith("READY")
    run = client.get_run(record["run_id"])
    assert [o.model_id for o in run.outputs.model_outputs] == [record["model_id"]]



def test_version_records_the_exported_step_and_why(store, tiny_concept, tmp_path):
    """Issue 20: the version says which training step's weights it holds and why
    (``concept.json``'s ``exported_step`` / ``export_reason``)."""
    import shutil

    base, concept = tiny_concept
    chosen = shutil.copytree(concept, tmp_path / "chosen")
    record = json.loads((chosen / "concept.json").read_text())
    why = "export: best, best csim_*_heldout = 0.6100 (eligible)"
    record.update(exported_step=40, export_reason=why)
    (chosen / "concept.json").write_text(json.dumps(record))
    registered = register(store, (base, chosen), csim=0.6)
    version = store[1].get_model_version(MODEL, str(registered["version"]))
    assert version.tags["exported_step"] == "40"
    assert version.tags["export_reason"] == why


def _load_champion(uri: str):
    from magicapture_pipeline.serving.batch import load_registered

    return load_registered(f"models:/{MODEL}@champion", uri)


def test_champion_samples_exactly_like_generate(store, tiny_concept, monkeypatch):
    """The registered model draws generate's pixels: same scheduler, steps, guidance, scales."""
    from magicapture_pipeline.core.generation.postprocess import read_provenance
    from magicapture_pipeline.core.generation.sampling import run_generation
    from magicapture_pipeline.serving.base_model import PROJECT_ROOT_ENV

    uri, client, _ = store
    base, concept = tiny_concept
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(base.parent))
    promote(client, MODEL, register(store, tiny_concept, csim=0.6)["version"], GATES)
    model = _load_champion(uri)
    out = model.predict(pd.DataFrame({"prompt": ["a photo of a [V1] person in the style of [V2]"]}))
    row = out.loc[0]
    assert row["prompt"] == "a photo of a <v1> person in the style of <v2>"
    assert (row["seed"], row["steps"], row["guidance_scale"]) == (11, 2, 7.0)
    assert (row["scheduler"], row["lora_scale_unet"], row["resolution"]) == (
        "euler_ancestral",
        0.6,
        32,
    )
    served = decode_image(row["image"], keep_metadata=True)
    provenance = read_provenance(served)
    assert provenance["ai_generated"] is True and provenance["stage"] == "served"
    assert provenance["seed"] == 11 and provenance["concept"] == "test"
    generated = run_generation(base, concept, SAMPLING.model_copy(update={"images_per_prompt": 1}))
    assert generated.images[0].seed == 11
    expected = np.asarray(generated.images[0].image)
    assert np.array_equal(np.asarray(served.convert("RGB")), expected)
    # the request's steps and guidance_scale reach the sampler: pixels at non-default values
    asked = {"seed": [11], "steps": [4], "guidance_scale": [2.5]}
    other = model.predict(pd.DataFrame({"prompt": [row["prompt"]], **asked}))
    assert (other.loc[0, "seed"], other.loc[0, "steps"], other.loc[0, "guidance_scale"]) == (
        11,
        4,
        2.5,
    )
    settings = {"images_per_prompt": 1, "num_inference_steps": 4, "guidance_scale": 2.5}
    expected = np.asarray(
        run_generation(base, concept, SAMPLING.model_copy(update=settings)).images[0].image
    )
    pixels = np.asarray(decode_image(other.loc[0, "image"]))
    assert np.array_equal(pixels, expected)
    assert not np.array_equal(pixels, np.asarray(served.convert("RGB")))  # the values matter


def test_refused_request_does_no_work(store, tiny_concept, monkeypatch):
    from magicapture_pipeline.core.generation import sampling as generation
    from magicapture_pipeline.serving.base_model import PROJECT_ROOT_ENV
    from magicapture_pipeline.serving.requests import RequestRefused

    uri, client, _ = store
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(tiny_concept[0].parent))
    promote(client, MODEL, register(store, tiny_concept, csim=0.6)["version"], GATES)
    model = _load_champion(uri)
    calls = []
    real = generation.sample_image
    counted = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(generation, "sample_image", counted)
    good = {"prompt": "a photo of [V1]", "seed": 1}
    with pytest.raises(RequestRefused, match=r"row 1: 'steps' is 100000000; .*\[1, 150\]"):
        model.predict(pd.DataFrame([{**good, "steps": 2}, {**good, "steps": 100_000_000}]))
    with pytest.raises(RequestRefused, match="prompt' is 8[0-9] tokens; the limit is 77"):
        model.predict(pd.DataFrame([{"prompt": "a " * 85}]))
    with pytest.raises(RequestRefused, match="5 rows in one request; at most 4"):
        model.predict(pd.DataFrame([good] * 5))
    assert calls == []
    model.predict(pd.DataFrame([good]))
    assert calls == [1]


_HIDE_INSTALLED = """
import os, sys, traceback
from pathlib import Path
# hide this project's installed copy (editable .pth, PYTHONPATH): only the model's code remains
sys.path = [p for p in sys.path if not (Path(p or '.') / 'magicapture_pipeline').is_dir()]
result, model_uri, elsewhere, root = sys.argv[1:5]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(model_uri)
import magicapture_pipeline
assert '/code/magicapture_pipeline/' in magicapture_pipeline.__file__, magicapture_pipeline.__file__
out = model.predict(pd.DataFrame({'prompt': ['a photo of [V1] in the style of [V2]'], 'seed': [3]}))
out.to_json(result)
# from another folder, without the project root: the missing base model is named
os.chdir(elsewhere)
try:
    mlflow.pyfunc.load_model(model_uri)
except Exception:
    print('ELSEWHERE REFUSED', traceback.format_exc(), file=sys.stderr)
else:
    print('ELSEWHERE LOADED', file=sys.stderr)
# ... and with it set, the model loads there and samples
os.environ['MAGICAPTURE_PROJECT_ROOT'] = root
mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({'prompt': ['[V1]'], 'seed': [1]}))
print('WITH ROOT LOADED', file=sys.stderr)
"""


def _run_isolated(cwd: Path, uri: str, result: Path, elsewhere: Path, root: Path):
    hidden = {"PYTHONPATH", "MAGICAPTURE_PROJECT_ROOT"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env |= {"MLFLOW_TRACKING_URI": uri}
    model = f"models:/{MODEL}@champion"
    return subprocess.run(
        [sys.executable, "-c", _HIDE_INSTALLED, str(result), model, str(elsewhere), str(root)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_champion_loads_elsewhere_from_its_own_code_and_requirements(
    store, tiny_concept, tmp_path
):
    """A fresh process without this project installed: the model's code_paths and pinned
    requirements are enough; from another folder the missing base model is named, and
    ``MAGICAPTURE_PROJECT_ROOT`` finds it. One child process makes the three loads (in the
    project folder, elsewhere, elsewhere with the variable set): each child pays torch's,
    diffusers' and MLflow's imports, several CPU seconds."""
    uri, client, _ = store
    base, _ = tiny_concept
    record = register(store, tiny_concept, csim=0.6)
    promote(client, MODEL, record["version"], GATES)
    result = tmp_path / "out.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _run_isolated(base.parent, uri, result, elsewhere, base.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    out = pd.read_json(result)
    assert out.loc[0, "prompt"] == "a photo of <v1> in the style of <v2>"
    assert out.loc[0, "seed"] == 3 and out.loc[0, "steps"] == 2
    assert decode_image(out.loc[0, "image"]).size == (32, 32)
    import mlflow.artifacts

    from magicapture_pipeline.tracking.uris import tracking

    with tracking(uri):
        local = Path(mlflow.artifacts.download_artifacts(record["source"], dst_path=tmp_path))
    pins = (local / "requirements.txt").read_text()
    for package in ("torch==", "diffusers==", "transformers==", "peft==", "pydantic=="):
        assert package in pins
    assert (local / "code" / "magicapture_pipeline" / "serving" / "concept_model.py").is_file()
    refused = done.stderr.split("ELSEWHERE REFUSED", 1)
    assert len(refused) == 2, done.stderr[-3000:]  # elsewhere, the load failed
    assert "base model is the project folder 'tiny_sd'" in refused[1]
    assert "MAGICAPTURE_PROJECT_ROOT" in refused[1]
    assert "WITH ROOT LOADED" in refused[1], done.stderr[-3000:]


def promote_in_process(project: Path, env: str | None, params: dict) -> None:
    """``kedro run --pipelines=promote --env=<env> --params=<params>`` in this process: the same
    session, hooks (MLflow run included) and nodes, without paying Kedro's and MLflow's imports
    again in a child process (several CPU seconds each)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        session.run(pipeline_names=["promote"])


@pytest.mark.integration
@pytest.mark.slow
def test_promote_and_rollback_from_the_command_line(project_copy, tiny_concept, monkeypatch,
                                                    capsys):
    """``kedro run --pipelines=promote`` refuses (a ``kedro`` process: exit status, message, a
    FAILED run that names the node, champion and versions untouched: formerly also ``test_hook``'s
    failed-run test, which ran one more ``kedro run`` for the same checks) and rolls back from
    Kedro's command line (in this process, as the successful promotions before them), and
    ``where_to_look`` / ``serving.registry`` are called through their ``main``."""
    uri = f"sqlite:///{project_copy / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(project_copy / "art").as_uri())
    store = (uri, client, experiment)
    register(store, tiny_concept, csim=0.6)
    register(store, tiny_concept, csim=0.1)
    name = f"--params=model_name={MODEL}"
    promote_in_process(project_copy, None, {"model_name": MODEL, "model_version": 1})
    assert aliases(client) == {"candidate": 2, "champion": 1}
    done = run_kedro(project_copy, "run", "--pipelines=promote", f"{name},model_version=2")
    assert done.returncode != 0
    assert "min_metrics.csim_arcface: csim_arcface=0.1 < 0.4" in done.stdout + done.stderr
    assert aliases(client) == {"candidate": 2, "champion": 1}
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2
    experiment = client.get_experiment_by_name("magicapture-my-concept")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    assert "min_metrics.csim_arcface" in runs[1].data.tags["error"]
    assert runs[1].data.tags["error.node"] == "apply_promotion"
    assert runs[1].data.tags["kedro.pipelines"] == "promote"
    # the demo env's lenient gates let it through; then one command rolls back
    promote_in_process(project_copy, "demo", {"model_name": MODEL, "model_version": 2})
    assert aliases(client) == {"candidate": 2, "champion": 2, "previous": 1}
    # the rollback through Kedro's command line in this process (the refusal above is the child)
    done = run_kedro_here(project_copy, "run", "--pipelines=promote", f"{name},action=rollback")
    assert done.returncode == 0, done.stderr[-3000:]
    assert aliases(client) == {"candidate": 2, "champion": 1, "previous": 2}
    record = json.loads((project_copy / "data/08_reporting/my-concept/promotion.json").read_text())
    assert record["action"] == "rollback" and record["champion"] == 1
    from magicapture_pipeline import where_to_look
    from magicapture_pipeline.serving import registry

    capsys.readouterr()
    where_to_look.main(["--env=demo", "--project", str(project_copy)])
    summary = capsys.readouterr().out
    assert "make ui" in summary and "data/08_reporting/demo/promotion.json" in summary
    # the same without Kedro's runner: python -m magicapture_pipeline.serving.registry
    monkeypatch.chdir(project_copy)
    registry.main(["rollback", MODEL])
    assert aliases(client) == {"candidate": 2, "champion": 2, "previous": 1}
