"""DreamBooth's class images (issue 18 §2): sampled from the BASE model, counted, cached per
concept and reused only while base model, prompt, count, seed, steps, CFG and resolution match.

Each test names the break it was seen to catch (introduced by hand once, then restored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicapture_pipeline.config.benchmark import VariantConfig
from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.core.evaluation.dreambooth import prior_inputs
from magicapture_pipeline.core.generation.class_images import class_image_settings, class_images
from magicapture_pipeline.core.generation.sampling import load_base_pipeline, sample_image

RES = 32


def dreambooth_row(count: int = 3, seed: int = 5) -> VariantConfig:
    return VariantConfig(
        name="DreamBooth-LoRA",
        method="dreambooth_lora",
        prior_preservation={"num_class_images": count, "seed": seed},
    )


def sampling(**overrides) -> GenerationConfig:
    values = {"num_inference_steps": 2, "guidance_scale": 7.5, "device": "cpu",
              "dtype": "float32"}
    return GenerationConfig.model_validate({**values, **overrides})


def _never() -> None:
    raise AssertionError("the base pipeline was loaded although the cache matched")


def test_class_images_are_the_base_models_counted_and_cached(tiny_dir, tmp_path: Path):
    """Three images of "a photo of a person", pixel for pixel what the base model's own
    pipeline samples at seeds 5, 6, 7; a second call with the same settings loads no pipeline.
    Breaks caught: every image drawn with the same seed (``seed=settings["seed"]``), the count
    cap ignored, and a cache that never hits (the manifest's settings not compared equal)."""
    root = tmp_path / "data" / "05_model_input" / "c" / "class_images"
    found = prior_inputs(dreambooth_row(), base=str(tiny_dir), generation=sampling(),
                         resolution=RES, root=root)
    assert found.report["generated"] is True and found.report["count"] == 3
    assert found.prompt == "a photo of a person" and found.weight == 1.0
    files = sorted(Path(found.report["folder"]).glob("class_*.png"))
    assert len(files) == 3 and len(found.images) == 3
    pipe = load_base_pipeline(tiny_dir, device="cpu", dtype="float32")
    for index, path in enumerate(files):
        expected = sample_image(pipe, "a photo of a person", seed=5 + index,
                                num_inference_steps=2, guidance_scale=7.5, resolution=RES)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(expected)), path.name
    assert not np.array_equal(np.asarray(Image.open(files[0])), np.asarray(Image.open(files[1])))

    settings = class_image_settings(base_model=str(tiny_dir), prompt="a photo of a person",
                                    count=3, seed=5, steps=2, guidance=7.5, resolution=RES)
    again, generated = class_images(root, settings, _never)
    assert generated is False and again == files


@pytest.mark.parametrize(
    "change", [{"count": 3}, {"seed": 6}, {"steps": 3}, {"prompt": "a photo of a man"},
               {"base_model": "other/model"}]
)
def test_a_changed_setting_misses_the_cache(tmp_path: Path, change):
    """Any setting the images depend on changes the cache entry (no pipeline is built here: the
    stand-in pipeline counts its calls). Break caught: the key leaving out the seed."""
    calls: list[str] = []

    class Pipe:
        def __call__(self, prompt, **kwargs):
            calls.append(prompt)

            class Out:
                images = [Image.new("RGB", (RES, RES), (len(calls), 0, 0))]

            return Out()

    base = {"base_model": "tiny", "prompt": "a photo of a person", "count": 2, "seed": 5,
            "steps": 2, "guidance": 7.5, "resolution": RES}
    class_images(tmp_path, class_image_settings(**base), Pipe)
    assert len(calls) == 2
    class_images(tmp_path, class_image_settings(**base), _never)
    _, generated = class_images(tmp_path, class_image_settings(**{**base, **change}), Pipe)
    assert generated is True


def test_a_missing_image_regenerates_the_set(tmp_path: Path):
    """A cached set with one image deleted is not reused. Break caught: the check that every
    listed file exists left out."""
    class Pipe:
        def __call__(self, prompt, **kwargs):
            class Out:
                images = [Image.new("RGB", (RES, RES))]

            return Out()

    settings = class_image_settings(base_model="tiny", prompt="p", count=2, seed=0, steps=1,
                                    guidance=1.0, resolution=RES)
    paths, _ = class_images(tmp_path, settings, Pipe)
    paths[1].unlink()
    again, generated = class_images(tmp_path, settings, Pipe)
    assert generated is True and all(p.is_file() for p in again)


def test_the_demo_cap_limits_the_count(tiny_dir, tmp_path: Path):
    """benchmark.num_class_images caps the row's count (demo: a handful)."""
    found = prior_inputs(dreambooth_row(count=100), base=str(tiny_dir), generation=sampling(),
                         resolution=RES, root=tmp_path, count_cap=2)
    assert found.report["count"] == 2 and len(found.images) == 2
    assert tuple(found.images[0].shape) == (3, RES, RES)


def test_prior_preservation_only_on_the_dreambooth_row():
    with pytest.raises(ValueError, match="'MagiCapture'.*only dreambooth_lora"):
        VariantConfig(name="MagiCapture", method="magicapture",
                      prior_preservation={"num_class_images": 2})
