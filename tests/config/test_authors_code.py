"""The authors' code citations are checked against the authors' files (config/authors_code.py)."""

import os
from pathlib import Path

import pytest

from magicapture_pipeline.config.adapters import LoraConfigModel
from magicapture_pipeline.config.authors_code import CHECKS, check_all, check_field, unchecked
from magicapture_pipeline.config.training import COMPOSED_TEMPLATES, StageTwoConfig

RANK = CHECKS[("LoraConfigModel", "rank")]
COMPOSED = CHECKS[("StageTwoConfig", "composed_templates")]


def test_every_authors_code_default_has_a_check():
    assert unchecked() == []


def _write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def test_a_flag_with_our_value_passes_and_another_value_is_named(tmp_path):
    _write(tmp_path, "train_magicapture.sh", "python train.py \\\n  --lora_rank=4 \\\n")
    assert check_field(tmp_path, LoraConfigModel, "rank", RANK) == []
    _write(tmp_path, "train_magicapture.sh", "python train.py \\\n  --lora_rank=8 \\\n")
    assert check_field(tmp_path, LoraConfigModel, "rank", RANK) == [
        "MISMATCH LoraConfigModel.rank: default 4, their files give 8",
        "MISMATCH LoraConfigModel.rank: authors' value 4, theirs 8",
    ]


def test_a_cited_flag_missing_from_its_file_is_not_found(tmp_path):
    _write(tmp_path, "train_magicapture.sh", "python train.py --lora_dim=4\n")
    (problem,) = check_field(tmp_path, LoraConfigModel, "rank", RANK)
    assert problem.startswith("NOT FOUND LoraConfigModel.rank: train_magicapture.sh: --lora_rank")


def test_a_template_list_is_read_without_running_the_file(tmp_path):
    theirs = [t.replace("{v1}", "{}").replace("{v2}", "{}") for t in COMPOSED_TEMPLATES]
    dataset = "lora_diffusion_/dataset.py"
    _write(tmp_path, dataset, f"import nothing_here\nBOTH_TEMPLATE2 = {theirs!r}\n")
    assert check_field(tmp_path, StageTwoConfig, "composed_templates", COMPOSED) == []
    _write(tmp_path, dataset, f"BOTH_TEMPLATE2 = {theirs[:-1]!r}\n")
    problems = check_field(tmp_path, StageTwoConfig, "composed_templates", COMPOSED)
    assert [p.split(":")[0] for p in problems] == ["MISMATCH StageTwoConfig.composed_templates"] * 2


CHECKOUT = os.environ.get("MAGICAPTURE_CHECKOUT")


@pytest.mark.skipif(not CHECKOUT, reason="set MAGICAPTURE_CHECKOUT to a junhahyung/MagiCapture "
                    "checkout to check every citation against it (not vendored here)")
def test_every_citation_matches_the_authors_checkout():
    ok, problems = check_all(Path(CHECKOUT))
    assert problems == []
    assert len(ok) >= 65
