"""``kedro run --pipelines=generate,postprocess,evaluate`` as a user runs it, in a project copy.

The inputs the earlier stages would write (a tiny base model, an exported concept, face crops,
masks and the training set) are put where the catalog contract says for the concept
``it``; a test env (``conf/it``)
declares the preprocess datasets in case that stage's catalog is absent and shrinks sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from conftest import run_kedro_here
from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.generation.postprocess import verify_provenance
from magicapture_pipeline.core.models.builders import build_tiny_sd
from tiny_concept import write_test_concept

IT_CATALOG = """
face_crops:
  type: partitions.PartitionedDataset
  path: data/02_intermediate/it/face_crops
  dataset: {type: pillow.ImageDataset}
  filename_suffix: .png
face_masks:
  type: partitions.PartitionedDataset
  path: data/02_intermediate/it/face_masks
  dataset: {type: pillow.ImageDataset}
  filename_suffix: .png
training_set:
  type: json.JSONDataset
  filepath: data/05_model_input/it/training_set.json
"""

IT_PARAMETERS = """
generation:
  resolution: 64
  images_per_prompt: 1
  num_inference_steps: 2
"""


def _write(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.mark.integration
@pytest.mark.slow
def test_kedro_run_generate_postprocess_evaluate(project_copy: Path, monkeypatch):
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")
    # Kedro's bootstrap needs the source folder to exist; the package comes from the install.
    models = project_copy / "data/06_models"
    build_tiny_sd(models / "tiny_sd", TinyModelConfig(sample_size=64))
    (models / "it").mkdir()
    (models / "it/base_model.json").write_text(json.dumps({"path": "data/06_models/tiny_sd"}))
    write_test_concept(models / "tiny_sd", models / "it/concept")
    crops = project_copy / "data/02_intermediate/it/face_crops"
    masks = project_copy / "data/02_intermediate/it/face_masks"
    face = Image.fromarray(data.astronaut()).crop((110, 10, 350, 250)).resize((64, 64))
    _write(crops / "source/a.png", face)
    _write(crops / "reference/r.png", Image.fromarray(data.chelsea()).resize((64, 64)))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    _write(masks / "image/reference/r.png", Image.fromarray(mask))
    (project_copy / "data/05_model_input/it").mkdir(parents=True)
    (project_copy / "data/05_model_input/it/training_set.json").write_text(
        json.dumps({"items": [{"id": "a", "role": "source"}, {"id": "r", "role": "reference"}]})
    )
    env = project_copy / "conf/it"
    env.mkdir()
    (env / "catalog_inputs.yml").write_text(IT_CATALOG)
    (env / "parameters_generate.yml").write_text(IT_PARAMETERS)

    # Kedro's command line in this process (``run_kedro_here``): the stages' outputs are under
    # test, not the process; real ``kedro`` processes run these stages in tests/e2e/test_dvc.py
    done = run_kedro_here(project_copy, "run", "--pipelines=generate,postprocess,evaluate",
                          "--env=it", "--params=concept=it")
    assert done.returncode == 0, done.stderr[-4000:]

    generated = project_copy / "data/07_model_output/it/generated/p00_s000.png"
    post = project_copy / "data/07_model_output/it/postprocessed/p00_s000.png"
    assert verify_provenance(generated)["ai_generated"]
    assert Image.open(post).size == (256, 256)
    assert verify_provenance(post)["watermark_ok"] is True
    metrics = json.loads((project_copy / "data/08_reporting/it/metrics.json").read_text())
    assert metrics["n_images"] == 1.0
    # offline: no CLIP weights, so style and aesthetic are reasons, never numbers
    assert "style_similarity" not in metrics and metrics["unavailable"]["style_similarity"]
    assert "aesthetic_score" not in metrics and metrics["unavailable"]["aesthetic_score"]
    assert (project_copy / "data/08_reporting/it/generation_grid.png").is_file()
    assert (project_copy / "data/08_reporting/it/per_image_metrics.csv").is_file()
