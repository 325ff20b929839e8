"""The gallery to choose the champion (issue 22): versions side by side, same prompts and seeds,
metrics with intervals, aliases; escaped; logged by the registry step; rendered in Chromium."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script, skip_loudly_without_chromium
from magicapture_pipeline.serving.gallery import (
    VersionView,
    build_gallery,
    format_metric,
    main,
    render_html,
    write_gallery,
)

EVIL = '<script>alert("x")</script>'


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(text)
    return parser.tags


def views() -> list[VersionView]:
    """Two versions with different metrics and different (flat-colour) images per prompt."""
    colours = {2: [(255, 0, 0), (0, 255, 0)], 1: [(0, 0, 255), (255, 255, 0)]}
    return [
        VersionView(
            version,
            aliases,
            metrics,
            images=[Image.new("RGB", (16, 16), c) for c in colours[version]],
        )
        for version, aliases, metrics in (
            (
                2,
                ["candidate"],
                {"csim_arcface": 0.5, "csim_arcface_se": 0.01, "csim_arcface_n": 64.0},
            ),
            (1, ["champion", EVIL], {"csim_arcface": 0.3}),
        )
    ]


def test_metric_shows_its_interval_and_n():
    assert format_metric(0.5, 0.01, 64) == "0.5 ± 0.02 (n=64)"
    assert format_metric(0.3, None, None) == "0.3"


def test_every_string_is_escaped():
    """A model name, alias or prompt carrying markup adds no tag to the page."""
    prompts = [f"a photo of [V1] {EVIL}", '"><img src=x onerror=alert(1)>']
    page = render_html(f"magicapture-{EVIL}", views(), prompts, [7, 8])
    tags = parse(page)
    assert [t for t, _ in tags].count("script") == 0
    images = [a for t, a in tags if t == "img"]
    assert [a["src"] for a in images] == [
        "images/v2_p0.png",
        "images/v1_p0.png",
        "images/v2_p1.png",
        "images/v1_p1.png",
    ]
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "0.5 ± 0.02 (n=64)" in page and "seed 8" in page
    assert "@champion" in page and "@candidate" in page


def test_written_whole_with_images_beside(tmp_path: Path):
    out = tmp_path / "gallery"
    page = write_gallery(out, "magicapture-x", views(), ["p0", "p1"], [1, 2])
    assert page == out / "index.html"
    assert np.asarray(Image.open(out / "images/v1_p1.png"))[0, 0].tolist() == [255, 255, 0]
    assert np.asarray(Image.open(out / "images/v2_p0.png"))[0, 0].tolist() == [255, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]  # no temp sibling left


def test_cli_refuses_a_bad_concept(tmp_path: Path, capsys):
    assert main(["--concept", "../x", "--project", str(tmp_path)]) == 2
    assert "gallery refused" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_cli_names_a_missing_model(tmp_path: Path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["--concept", "nobody", "--project", str(tmp_path), "--tracking-uri", uri])
    assert code == 1
    assert "no registered model 'magicapture-nobody'" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing written on failure


@pytest.mark.integration
def test_registry_step_logs_a_gallery_of_every_version(tmp_path: Path, tmp_path_factory):
    """Two registered versions (different embeddings): the registry step logs ``gallery/`` with
    both, sampled on the same prompts and seeds, each image the pixels ``generate``'s sampling
    code draws for that version."""
    from mlflow import MlflowClient
    from safetensors.torch import load_file, save_file
    from test_registry import MODEL, SAMPLING, register, tiny_concept_in

    from magicapture_pipeline.core.generation.sampling import (
        concept_tokens,
        prepare_pipeline,
        sample_image,
    )
    from magicapture_pipeline.serving.concept_model import fill_tokens

    base, concept = tiny_concept_in(tmp_path_factory.mktemp("gallery_concept"), tmp_path_factory)
    other = tmp_path / "concept2"
    shutil.copytree(concept, other)
    for name in ("v1.safetensors", "v2.safetensors"):
        tensors = load_file(other / name)
        save_file({k: -3 * v for k, v in tensors.items()}, other / name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    store = (uri, client, client.create_experiment("g", (tmp_path / "art").as_uri()))
    register(store, (base, concept), csim=0.6, gallery_prompts=2)
    second = register(store, (base, other), csim=0.7, gallery_prompts=2)
    assert second["gallery"] == "gallery/index.html"
    local = Path(client.download_artifacts(second["run_id"], "gallery", str(tmp_path / "dl")))
    page = (local / "index.html").read_text()
    assert [a["src"] for t, a in parse(page) if t == "img"] == [
        "images/v2_p0.png",
        "images/v1_p0.png",
        "images/v2_p1.png",
        "images/v1_p1.png",
    ]
    assert '<span class="alias">@candidate</span></th><th>v1</th>' in page
    prompts = [SAMPLING.prompt_templates[0]] * 2  # one template: rows differ by seed
    for version, folder in ((1, concept), (2, other)):
        pipe, meta = prepare_pipeline(str(base), folder, SAMPLING)
        for index, prompt in enumerate(prompts):
            expected = sample_image(
                pipe,
                fill_tokens(prompt, *concept_tokens(meta)),
                seed=SAMPLING.seed + index,
                num_inference_steps=SAMPLING.num_inference_steps,
                guidance_scale=SAMPLING.guidance_scale,
                resolution=SAMPLING.resolution,
                negative_prompt=SAMPLING.negative_prompt,
            )
            got = np.asarray(Image.open(local / f"images/v{version}_p{index}.png").convert("RGB"))
            assert np.array_equal(got, np.asarray(expected.convert("RGB"))), (version, index)
    v1 = np.asarray(Image.open(local / "images/v1_p0.png"), dtype=np.int16)
    v2 = np.asarray(Image.open(local / "images/v2_p0.png"), dtype=np.int16)
    assert np.abs(v1 - v2).mean() > 1.0  # the two versions really differ on the same seed
    with pytest.raises(ValueError, match="2 prompts and 1 seeds"):
        build_gallery(MODEL, uri, tmp_path / "x", ["a", "b"], [1])


@pytest.mark.slow
@pytest.mark.service
def test_gallery_renders_in_headless_chromium(tmp_path: Path, capsys):
    """Every image beside the page loads in Chromium (relative paths) and the screenshot shows
    the versions' colours. The counts are read from what ``main`` printed: calling
    ``screenshot`` again cost two more Chromium launches."""
    script = load_script("screenshot_gallery")
    skip_loudly_without_chromium(script, "the gallery")
    page = write_gallery(tmp_path / "gallery", f"magicapture-{EVIL}", views(), ["p0", "p1"], [1, 2])
    shot = tmp_path / "shot.png"
    capsys.readouterr()
    assert script.main([str(page), "--out", str(shot)]) == 0
    assert capsys.readouterr().out == f"{shot}: 4/4 images decoded\n"
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]:
        assert (pixels == colour).all(axis=1).any(), colour


def test_rows_cycle_the_prompts_with_successive_seeds():
    from magicapture_pipeline.serving.gallery import gallery_rows

    assert gallery_rows(["a", "b", "a"], 10, 3) == (["a", "b", "a"], [10, 11, 12])
    assert gallery_rows(["a"], 0, 2) == (["a", "a"], [0, 1])
    with pytest.raises(ValueError, match="no prompt"):
        gallery_rows([], 0, 2)
