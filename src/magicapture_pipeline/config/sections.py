"""Which typed model checks which ``params:`` section, and the check of a whole run's parameters.

A run's parameters are checked together before its first node (the project hook in
``check_config.py``) and on their own with ``make check-config``: every problem in every section
the run reads is reported at once, each naming the field, the value and the allowed range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from magicapture_pipeline.config.benchmark import BenchmarkConfig
from magicapture_pipeline.config.export import ExportConfig
from magicapture_pipeline.config.generation import (
    EvaluationConfig,
    GenerationConfig,
    PostprocessConfig,
)
from magicapture_pipeline.config.merge import deep_merge
from magicapture_pipeline.config.model import ModelConfig
from magicapture_pipeline.config.paths import IMAGE_SUFFIXES, path_problems
from magicapture_pipeline.config.preprocess import (
    PreprocessConfig,
    SampleDataConfig,
    ValidationConfig,
)
from magicapture_pipeline.config.ranges import describe_errors
from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.config.tracking import PromoteRequest, RegistryConfig, TrackingConfig
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig

# ``params:<key>`` -> the model its node validates it with.
SECTIONS: dict[str, type[BaseModel]] = {
    "sample_data": SampleDataConfig,
    "preprocess": PreprocessConfig,
    "validation": ValidationConfig,
    "model": ModelConfig,
    "stage_one": StageOneConfig,
    "stage_two": StageTwoConfig,
    "generation": GenerationConfig,
    "postprocess": PostprocessConfig,
    "evaluation": EvaluationConfig,
    "benchmark": BenchmarkConfig,
    "tracking": TrackingConfig,
    "registry": RegistryConfig,
    "serving": ServingConfig,
    "export": ExportConfig,
}
# The promote pipeline's command line is three top-level keys checked together.
PROMOTE_KEYS = ("action", "model_name", "model_version")
# Read by the project hook on every run, whatever the pipeline.
ALWAYS = ("tracking",)


class ParameterError(ValueError):
    """Parameters that break their typed model; one line per problem, every section at once."""

    def __init__(self, problems: list[str], where: str = "") -> None:
        self.problems = problems
        head = f"{len(problems)} invalid parameter(s){f' ({where})' if where else ''}"
        super().__init__("\n".join([head + ":", *(f"  {line}" for line in problems)]))


def _plain(value: Any) -> Any:
    """Parameters as plain data (Kedro may already have built a typed model for a node)."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def effective_section(key: str, value: Any) -> Any:
    """The values a run uses for ``params:<key>``: every default (and recipe value) filled in,
    when ``key`` is a typed section and ``value`` valid; else ``value`` as given."""
    model = SECTIONS.get(key)
    plain = _plain(value)
    if model is None or not isinstance(plain, Mapping):
        return plain
    try:
        return model.model_validate(plain).model_dump(mode="json")
    except ValidationError:
        return plain


def effective_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with each typed section replaced by :func:`effective_section`."""
    return {key: effective_section(key, value) for key, value in parameters.items()}


def sections_read_by(parameter_inputs: Iterable[str]) -> list[str]:
    """The sections behind a pipeline's inputs (``params:stage_two.lora`` -> ``stage_two``)."""
    found = set(ALWAYS)
    for name in parameter_inputs:
        if not name.startswith("params:"):
            continue
        key = name.removeprefix("params:").split(".", 1)[0]
        found.add("promote" if key in PROMOTE_KEYS else key)
    return sorted(found)


def check_sections(parameters: Mapping[str, Any], sections: Iterable[str]) -> list[str]:
    """Every problem in the given sections of ``parameters`` (empty when all are valid)."""
    problems: list[str] = []
    for section in sections:
        if section == "promote":
            raw = {key: _plain(parameters[key]) for key in PROMOTE_KEYS if key in parameters}
            model: type[BaseModel] = PromoteRequest
        elif section in SECTIONS:
            model = SECTIONS[section]
            raw = _plain(parameters.get(section)) or {}
        else:
            continue  # a plain value (a folder, a flag) with no model of its own
        if not isinstance(raw, Mapping):
            problems.append(f"params:{section}: expected a mapping, got {type(raw).__name__}")
            continue
        try:
            model.model_validate(raw)
        except ValidationError as error:
            problems.extend(describe_errors(section, model, error))
            continue
        if section == "benchmark":
            problems.extend(_check_variants(parameters, raw))
        if section in ("stage_one", "stage_two"):
            problems.extend(_check_validation(parameters, section, raw))
    return problems


def _check_validation(
    parameters: Mapping[str, Any], stage: str, raw: Mapping[str, Any]
) -> list[str]:
    """A validation objective this run cannot compute (issue 20): a held-out metric while
    ``preprocess.heldout_sources`` holds no photo out, or an identity metric of a recognizer the
    ``evaluation`` section does not configure (:func:`identity_recognizer`)."""
    validation = SECTIONS[stage].model_validate(raw).validation
    objective = validation.objective
    if validation.every_n_steps == 0:
        return []
    problems = []
    where = f"params:{stage}.validation.objective: {objective!r}"
    if "heldout" in objective:
        preprocess = _plain(parameters.get("preprocess")) or {}
        if SECTIONS["preprocess"].model_validate(preprocess).heldout_sources == 0:
            problems.append(
                f"{where} needs a held-out source photo but preprocess.heldout_sources is 0 "
                "(hold one out, or choose another objective, e.g. csim_*)"
            )
    if objective.startswith(("csim", "copy_check")):
        recognizer, why = identity_recognizer(_plain(parameters.get("evaluation")) or {})
        other = {"arcface", "dlib"} - {recognizer}
        if recognizer is None:
            problems.append(f"{where} needs a face recognizer, but {why}")
        elif any(name in objective for name in other):
            problems.append(
                f"{where} names a recognizer this env does not score with ({why}): use "
                f"csim_{recognizer}... or csim_* (any recognizer)"
            )
    return problems


def identity_recognizer(evaluation: Mapping[str, Any]) -> tuple[str | None, str]:
    """The recognizer the evaluation protocol scores identity with (``core.evaluation.metrics.
    load_identity_embedder``'s rule) and why: ``("arcface" | "dlib" | None, reason)``."""
    try:
        config = SECTIONS["evaluation"].model_validate(evaluation)
    except ValidationError:
        return "dlib", "evaluation is invalid (reported on its own)"
    backend, model = config.identity_backend, config.arcface_model
    if backend == "arcface" and not model:
        return None, "evaluation.identity_backend is arcface and evaluation.arcface_model is unset"
    if backend == "arcface" or (backend == "auto" and model):
        return "arcface", f"evaluation.arcface_model = {model!r}"
    return "dlib", f"evaluation.identity_backend = {backend!r} without arcface_model: dlib"


def source_photo_problems(parameters: Mapping[str, Any], sections: Iterable[str],
                          project: Path) -> list[str]:  # fmt: skip
    """A held-out validation objective while the user's ``source_dir`` holds fewer photos than
    ``preprocess.heldout_min_sources``: preprocessing would hold none out (issue 20)."""
    folder = parameters.get("source_dir")
    if not isinstance(folder, str) or not folder:
        return []
    path = Path(folder).expanduser()
    path = path if path.is_absolute() else Path(project) / path
    try:
        photos = sum(
            1
            for p in path.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
    except OSError:
        return []  # the path rules report an unreadable folder
    if photos == 0:
        return []  # the path rules report an empty folder
    preprocess = _plain(parameters.get("preprocess")) or {}
    try:
        needed = SECTIONS["preprocess"].model_validate(preprocess).heldout_min_sources
    except ValidationError:
        return []
    problems = []
    for stage in ("stage_one", "stage_two"):
        try:
            validation = SECTIONS[stage].model_validate(_plain(parameters.get(stage)) or {})
        except ValidationError:
            continue
        validation = validation.validation
        if stage in sections and validation.every_n_steps and "heldout" in validation.objective:
            if photos < needed:
                problems.append(
                    f"params:{stage}.validation.objective: {validation.objective!r} needs a "
                    f"held-out photo, but source_dir {folder!r} holds {photos} photo(s) and "
                    f"preprocess.heldout_min_sources is {needed}: none would be held out "
                    "(add photos, or choose another objective, e.g. csim_*)"
                )
    return problems


def _check_variants(parameters: Mapping[str, Any], benchmark: Mapping[str, Any]) -> list[str]:
    """Each benchmark variant's stage overrides, merged onto the run's stages as it trains them."""
    problems = []
    for index, variant in enumerate(benchmark.get("variants") or []):
        for stage in ("stage_one", "stage_two"):
            override = variant.get(stage) or {}
            if not override:
                continue
            merged = deep_merge(_plain(parameters.get(stage)) or {}, override)
            model = SECTIONS[stage]
            try:
                model.model_validate(merged)
            except ValidationError as error:
                where = f"benchmark.variants.{index}.{stage}"
                problems.extend(describe_errors(where, model, error))
    return problems


def check_run(
    parameters: Mapping[str, Any], sections: Iterable[str], project: str | Path
) -> list[str]:
    """Every problem of a run before anything is written or cleared: the typed sections and the
    path rules (:mod:`magicapture_pipeline.config.paths`) of the folders it writes and reads."""
    sections = list(sections)
    problems = check_sections(parameters, sections) + path_problems(parameters, sections, project)
    return problems + source_photo_problems(parameters, sections, Path(project))


def check_parameters(
    parameters: Mapping[str, Any],
    sections: Iterable[str],
    where: str = "",
    project: str | Path | None = None,
) -> None:
    """Raise :class:`ParameterError` naming every invalid field of ``sections`` at once (and
    every broken path rule when ``project`` is given)."""
    sections = list(sections)
    problems = (
        check_sections(parameters, sections)
        if project is None
        else check_run(parameters, sections, project)
    )
    if problems:
        raise ParameterError(problems, where)
