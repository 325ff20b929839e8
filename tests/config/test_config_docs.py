"""Every knob in every configuration model documents itself."""

from pathlib import Path

import pytest

from magicapture_pipeline.config.docs import (
    FILES,
    _cell,
    config_models,
    defaults_with_recipe,
    main,
    render_markdown,
    render_provenance,
    stale,
    write,
)
from magicapture_pipeline.config.recipes import (
    AUTHORS_CODE,
    NESTED,
    PAPER,
    REQUIRED,
    SOURCES,
    paper,
    paper_place,
    provenance,
)

MODELS = list(config_models())


def test_there_are_config_models():
    assert MODELS, "no pydantic models found under magicapture_pipeline.config"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_every_field_has_one_line_help(model):
    fields = model.model_fields.items()
    undocumented = [name for name, f in fields if not (f.description or "").strip()]
    assert not undocumented, f"{model.__name__}: fields without a description: {undocumented}"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_unknown_keys_are_rejected(model):
    assert model.model_config.get("extra") == "forbid", (
        f"{model.__name__} must forbid unknown keys so a typo in conf/ fails loudly"
    )


def test_reference_renders_every_model():
    text = render_markdown()
    for model in MODELS:
        assert model.__name__ in text


def test_committed_reference_is_up_to_date():
    committed = (Path(__file__).resolve().parents[2] / "docs" / "parameters.md").read_text()
    assert committed == render_markdown(), (
        "docs/parameters.md is stale: run "
        "`python -m magicapture_pipeline.config.docs --write`"
    )


def test_committed_defaults_page_is_up_to_date():
    committed = (Path(__file__).resolve().parents[2] / "docs" / "defaults.md").read_text()
    assert committed == defaults_with_recipe(committed), (
        "docs/defaults.md's generated provenance tables or authors' recipe are stale: run "
        "`python -m magicapture_pipeline.config.docs --write`"
    )
    assert stale() == []


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_every_default_records_its_source(model):
    problems = []
    for name, field in model.model_fields.items():
        found = provenance(field)
        if found is None:
            problems.append(f"{name}: no provenance (json_schema_extra=paper/code/library/ours)")
            continue
        if found.source not in (*SOURCES, NESTED, REQUIRED):
            problems.append(f"{name}: unknown source {found.source!r}")
        if not found.cite.strip():
            problems.append(f"{name}: {found.source} without a citation or reason")
        if found.source == AUTHORS_CODE and not any(x in found.cite for x in (".py", ".sh")):
            problems.append(f"{name}: authors' code without its file: {found.cite!r}")
        if found.source == PAPER and paper_place(found.cite) is None:
            problems.append(
                f"{name}: a paper default must start with where the paper states it (a heading "
                f"of PAPER_PLACES, or Eq./Table/Fig. N): {found.cite!r}"
            )
    assert not problems, f"{model.__name__}: {problems}"


def test_a_paper_citation_must_name_a_place_the_paper_has():
    assert paper_place("Experiments: Training Details: 1200 steps") == (
        "Experiments: Training Details"
    )
    assert paper_place("Supplement: Training Details, Eq. 10") == "Supplement: Training Details"
    assert paper_place("Eq. 4-6: a binary mask") == "Eq. 4"
    assert paper_place("Table 3: with post-processing") == "Table 3"
    # no place, a section number the unnumbered paper lacks, numbers past the paper's last
    for unplaced in ("stage one lr 5e-4", "Sec. 3.4: super-resolution", "Eq. 12", "Table 4",
                     "Fig. 18", "Training Details: 'batch size of 1'", "Method: Foo"):
        assert paper_place(unplaced) is None, unplaced


def test_a_source_needs_its_citation():
    with pytest.raises(ValueError, match="citation"):
        paper(" ")


def test_defaults_page_shows_each_field_s_recorded_source():
    text = render_provenance()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    by_key = {row.split("`")[1]: row for row in rows}
    from magicapture_pipeline.config.sections import SECTIONS

    checked = 0
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            found = provenance(field)
            if found.source == NESTED:
                continue
            row = by_key[f"{section}.{name}"]
            assert f"| {found.source} | {_cell(found.cite)} |" in row, row
            checked += 1
    assert checked > 100


def test_defaults_page_is_ordered_by_yaml_file():
    text = render_provenance()
    positions = [text.index(f"### `{name}`") for name in FILES]
    assert positions == sorted(positions)
    assert text.index("`stage_two.lora.rank`") < text.index("`stage_two.identity.mode`")


def test_check_names_a_stale_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "defaults.md").write_text("# Defaults\n")
    write(tmp_path)
    assert stale(tmp_path) == []
    text = (tmp_path / "defaults.md").read_text()
    cell = " Experiments: Training Details: second phase"
    edited = text.replace(f"| paper |{cell}", f"| ours |{cell}")
    assert edited != text
    (tmp_path / "defaults.md").write_text(edited)
    assert stale(tmp_path) == ["docs/defaults.md"]
    monkeypatch.setattr("magicapture_pipeline.config.docs.DOCS", tmp_path)
    assert main(["--check"]) == 1
    assert "docs/defaults.md is stale" in capsys.readouterr().err


def test_reference_is_ordered_by_yaml_file_and_key():
    text = render_markdown()
    positions = [text.index(f"## `{name}`") for name in FILES]
    assert positions == sorted(positions)
    base = Path(__file__).resolve().parents[2] / "conf" / "base"
    assert set(FILES) == {p.name for p in base.glob("parameters_*.yml")}
    assert text.index("`stage_two.lora.rank`") < text.index("`stage_two.identity.mode`")
