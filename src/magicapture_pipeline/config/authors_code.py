"""Every ``code(...)`` citation and recorded authors' value, checked against the authors' files.

``python -m magicapture_pipeline.config.authors_code PATH`` reads a checkout of
junhahyung/MagiCapture at PATH (``git archive`` of it will do; checked at 004c04e) and prints one
line per field: ``ok``, ``MISMATCH`` (the value their file gives, and ours) or ``NOT FOUND`` (the
cited flag is not in the cited file). Exit 1 on any problem. Nothing of theirs is imported or
run: each check is a pattern searched in a file (group 1, or every group, is the value) or a
module-level list read with ``ast``. A check derives the field's default (``authors' code``
fields) and/or the recorded authors' value (``recipe: official``); ``tests/config`` requires a
check for every ``authors' code`` default, so a new citation cannot go unchecked.
"""

from __future__ import annotations

import ast
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from magicapture_pipeline.config.docs import config_models
from magicapture_pipeline.config.recipes import AUTHORS_CODE, authors_value, provenance

SH = "train_magicapture.sh"
TRAIN = "lora_diffusion_/magicapture_train.py"
INFER = "inference_magicapture.py"
DATASET = "lora_diffusion_/dataset.py"
LORA = "lora_diffusion_/lora.py"
UTILS = "lora_diffusion_/utils.py"
LOSS_UTILS = "lora_diffusion_/loss_utils.py"

# train_magicapture.sh's lr flags times --scale_lr's factor (gradient_accumulation_steps x batch)
_SCALED = ((SH, r"--gradient_accumulation_steps=(\d+)"), (SH, r"--train_batch_size=(\d+)"))
_OFFICIAL_TARGETS = {"CrossAttention", "Attention", "GEGLU"}  # the official LoRA preset's
_SCHEDULERS = {"EulerAncestralDiscrete": "euler_ancestral"}
_PERFORM_TUNING_T = r"t_mutliplier=([\d.]+),\n\s*mixed_precision=True"


class Check(NamedTuple):
    """What to read (file, pattern; ``list:NAME`` reads a module-level list) and the default
    and/or authors' value the read values give (``None``: not checked)."""

    reads: tuple[tuple[str, str], ...]
    default: Callable[..., Any] | None
    authors: Callable[..., Any] | None = None


def _same(*reads: tuple[str, str]) -> Check:
    """The value read is both the default and the authors' value."""
    return Check(reads, lambda v: v, lambda v: v)


def _cited(*reads: tuple[str, str]) -> Check:
    """The value read is the default (no authors' value recorded: the same)."""
    return Check(reads, lambda v: v)


def _per_stage(one: Any, two: Any) -> dict[str, Any]:
    return {"stage_one": one, "stage_two": two}


def _lr(flag: str) -> Check:
    """A stage's rate: the flag is the paper's value, x --scale_lr the authors' effective one."""
    return Check(((SH, rf"--{flag}=([\d.e-]+)"), *_SCALED), None, lambda lr, acc, bs: lr * acc * bs)


_SAMPLING = {
    "guidance_scale": _cited((INFER, r"'--guidance_scale', type=float, default=([\d.]+)")),
    "lora_scale_text_encoder": _cited((INFER, r"tune_lora_scale\(pipe\.text_encoder, ([\d.]+)\)")),
    "lora_scale_unet": _cited((INFER, r"tune_lora_scale\(pipe\.unet, ([\d.]+)\)")),
    "negative_prompt": _cited((INFER, r"'--negative_prompt', type=str, default=\"([^\"]*)\"")),
    "num_inference_steps": _cited((INFER, r"'--step', type=int, default=(\d+)")),
    "scheduler": Check(
        ((INFER, r"'--start_scheduler', type=str, default=\"(\w+)\""),
         (INFER, r"\"euler\": (\w+)Scheduler")),
        lambda key, cls: _SCHEDULERS.get(cls, cls) if key == "euler" else key,
    ),
}
_STAGE = {
    "cache_latents": _cited((TRAIN, r"cached_latents: bool = (True|False),\n\s*use_mask_")),
    "lr_warmup_steps": Check(
        ((SH, r"--lr_warmup_steps=(\d+)"), (TRAIN, r"lr_warmup_steps_lora: int = (\d+)")),
        lambda one, two: one if one == two else (one, two),
        lambda one, two: one if one == two else (one, two),
    ),
    "source_templates": Check(
        ((DATASET, "list:OBJECT_TEMPLATE2"), (TRAIN, r"use_template: Literal\[.*\] = \"(\w+)\"")),
        lambda templates, use: templates if use == "object" else use,
        lambda templates, use: templates if use == "object" else use,
    ),
    "reference_templates": _same((DATASET, "list:STYLE_PERSON_TEMPLATE2")),
    "style_weight_until": _same((TRAIN, r"if cur_t < ([\d.]+) and")),
    # recorded authors' values of knobs whose default is not theirs
    "style_weight": Check(((SH, r"--lambda_style=([\d.]+)"),), None, lambda v: v),
    "color_jitter": Check(
        ((SH, r"--(color_jitter)\b"), (DATASET, r"transforms\.ColorJitter\(([\d.]+), ([\d.]+)\)")),
        None,
        lambda _, jitter: list(jitter),
    ),
    "lr_scheduler": Check(
        ((SH, r"--lr_scheduler=\"(\w+)\""), (TRAIN, r"lr_scheduler_lora: str = \"(\w+)\"")),
        None,
        lambda one, two: one if one == two else (one, two),
    ),
    "adam_weight_decay": Check(
        ((SH, r"--weight_decay_ti=([\d.]+)"), (SH, r"--weight_decay_lora=([\d.]+)")),
        None,
        _per_stage,
    ),
    "max_grad_norm": Check(
        ((TRAIN, r"count:clip_grad_norm_\("),
         (TRAIN, r"clip_grad_norm_\(\n\s*itertools\.chain\([^\n]*\), ([\d.]+)")),
        None,
        lambda n, two: _per_stage(None, two) if n == 1 else n,
    ),
    "max_timestep_fraction": Check(
        ((TRAIN, r"t_mutliplier=([\d.]+),\n    mixed_precision=False"), (TRAIN, _PERFORM_TUNING_T)),
        None,
        _per_stage,
    ),
    "mixed_precision": Check(
        ((TRAIN, r"mixed_precision=(False),\n\s*tokenizer=tokenizer,\n\s*clip_ti_decay"),
         (TRAIN, r"t_mutliplier=0\.8,\n\s*mixed_precision=(True)")),
        None,
        lambda one, two: _per_stage("fp16" if one else "no", "fp16" if two else "no"),
    ),
    "mask_floor": Check(((TRAIN, r"mask = \(mask \+ ([\d.]+)\)"),), None, lambda v: v),
}
CHECKS: dict[tuple[str, str], Check] = {
    ("LoraConfigModel", "rank"): _same((SH, r"--lora_rank=(\d+)")),
    ("LoraConfigModel", "alpha"): Check(
        ((SH, r"--lora_rank=(\d+)"), (TRAIN, r"lora_scale: float = ([\d.]+)"),
         (LORA, r"self\.lora_down\(input\)\)\)\)\n\s*\* self\.(scale)")),
        lambda rank, scale, _: float(rank * scale),
        lambda rank, scale, _: float(rank * scale),
    ),
    ("LoraConfigModel", "init"): Check(
        ((LORA, r"nn\.init\.normal_\(self\.lora_down\.weight, std=(1 / r)\)"),
         (LORA, r"nn\.init\.(zeros_)\(self\.lora_up\.weight\)")),
        lambda std, up: "gaussian" if (std, up) == ("1 / r", "zeros_") else (std, up),
        lambda std, up: "gaussian" if (std, up) == ("1 / r", "zeros_") else (std, up),
    ),
    ("LoraConfigModel", "text_encoder_learning_rate"): Check(
        ((SH, r"--learning_rate_text=([\d.e-]+)"), *_SCALED),
        lambda lr, acc, bs: lr,
        lambda lr, acc, bs: lr * acc * bs,
    ),
    ("LoraConfigModel", "preset"): Check(
        ((TRAIN, r"lora_unet_target_modules=(\{[^}]*\})"),),
        None,
        lambda targets: "official" if targets == _OFFICIAL_TARGETS else targets,
    ),
    ("PreprocessConfig", "resolution"): Check(
        ((SH, r"--resolution=(\d+)"), (TRAIN, r"resolution: int = (\d+),")),
        lambda flag, default: flag if flag == default else (flag, default),
    ),
    ("TokensConfig", "person_init"): _same((SH, r"--initializer_tokens=\"([^\"]+)\"")),
    ("TokensConfig", "random_std"): _same(
        (TRAIN, r"initializer_tokens_style = \[\"<rand-([\d.]+)>\"\]")
    ),
    ("EvaluationConfig", "clip_model"): Check(
        ((UTILS, r"def prepare_clip_model_sets\(eval_clip_id: str = \"([^\"]+)\""),),
        lambda v: v,
    ),
    ("FaceRestorationConfig", "backend"): Check(
        ((INFER, r"refined_img = (Codeformer)_img\("),), lambda v: v.lower()
    ),
    ("FaceRestorationConfig", "enabled"): Check(
        ((INFER, r"refined_img = (Codeformer)_img\("),), lambda v: True
    ),
    ("FaceRestorationConfig", "fidelity_weight"): Check(
        ((INFER, r"fidelity_weight=([\d.]+)"),), lambda v: v
    ),
    **{("GenerationConfig", name): check for name, check in _SAMPLING.items()},
    **{("SamplingConfig", name): check for name, check in _SAMPLING.items()},
    **{(stage, name): check for stage in ("StageOneConfig", "StageTwoConfig")
       for name, check in _STAGE.items()},
    ("StageOneConfig", "learning_rate"): _lr("learning_rate_ti"),
    ("StageOneConfig", "max_steps"): Check(((SH, r"--max_train_steps_ti=(\d+)"),), None, int),
    ("StageOneConfig", "embedding_norm_target"): Check(
        ((SH, r"--(clip_ti_decay)\b"), (TRAIN, r"pre_norm \+ lambda_ \* \(([\d.]+) - pre_norm\)")),
        None,
        lambda _, target: target,
    ),
    ("StageTwoConfig", "learning_rate"): _lr("learning_rate_unet"),
    ("StageTwoConfig", "embedding_learning_rate"): Check(
        ((SH, r"--continue_inversion_lr=([\d.e-]+)"),), None, lambda v: v
    ),
    ("StageTwoConfig", "max_steps"): Check(((SH, r"--max_train_steps_tuning=(\d+)"),), None, int),
    ("StageTwoConfig", "composed_templates"): _same((DATASET, "list:BOTH_TEMPLATE2")),
    ("MemoryConfig", "unet_gradient_checkpointing"): Check(
        ((SH, r"--(gradient_checkpointing)\b"),), None, lambda _: True
    ),
    ("AttentionConfig", "resolution"): Check(
        ((TRAIN, r"get_attentions\(controller, (\d+), \['up', 'down'\], True, bsz\)"),),
        lambda v: v,
    ),
    ("AttentionConfig", "weight"): Check(  # stage two's (train_inversion has attn_loss *= 0)
        ((TRAIN, r"attn_loss \*= ([\d.]+)\n\s*loss_recon = [^\n]*\n\s*loss = loss \+ attn_loss\n"
                 r"\s*if id_loss"),),
        None,
        float,
    ),
    ("IdentityConfig", "arch"): Check(
        ((LOSS_UTILS, r"^net = get_model\('(\w+)', fp16=True\)"),
         (LOSS_UTILS, r"^face_model_path = \"arcface_torch/models/(ms1mv3_arcface_r100_fp16)/")),
        lambda arch, _: arch,
    ),
    ("IdentityConfig", "threshold_fraction"): _same((TRAIN, _PERFORM_TUNING_T)),
    ("IdentityConfig", "weight"): Check(((SH, r"--lambda_arc=([\d.]+)"),), None, lambda v: v),
    ("IdentityConfig", "tasks"): Check(
        ((TRAIN, r"if batch\[\"types\"\]\[n\] != \"(style)\":"),),
        None,
        lambda _: ["source", "composed"],
    ),
    ("IdentityConfig", "mode"): Check(
        ((TRAIN, r"(id_model_pred) = unet\(id_latent_model_input"),), None, lambda _: "two_pass"
    ),
}
# A field whose composed_templates' list holds '{}' pairs: ours names them {v1} and {v2}.
_FORMATS = {"composed_templates": lambda ts: [t.format("{v1}", "{v2}") for t in ts]}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read(root: Path, file: str, pattern: str) -> Any:
    """The value ``pattern`` reads in ``root/file``; ``None`` when the file or match is absent."""
    path = root / file
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    if pattern.startswith("list:"):
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == pattern[5:] for t in node.targets
            ):
                return ast.literal_eval(node.value)
        return None
    if pattern.startswith("count:"):
        return len(re.findall(pattern[6:], text, re.M)) or None
    found = re.search(pattern, text, re.M)
    if found is None:
        return None
    groups = [_literal(g) for g in found.groups()]
    return groups[0] if len(groups) == 1 else tuple(groups)


def _equal(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, float) or isinstance(theirs, float):
        try:
            return math.isclose(float(ours), float(theirs), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(_equal(ours[k], theirs[k]) for k in ours)
    return ours == theirs


def check_field(root: Path, model: type, name: str, check: Check) -> list[str]:
    """Problems of one field (empty when its cited values match the authors' files)."""
    field = model.model_fields[name]
    where = f"{model.__name__}.{name}"
    values = [read(root, file, pattern) for file, pattern in check.reads]
    missing = [f"{f}: {p}" for (f, p), v in zip(check.reads, values, strict=True) if v is None]
    if missing:
        return [f"NOT FOUND {where}: {'; '.join(missing)}"]
    problems = []
    fmt = _FORMATS.get(name, lambda v: v)
    if check.default is not None:
        theirs, ours = fmt(check.default(*values)), field.get_default(call_default_factory=True)
        if not _equal(ours, theirs):
            problems.append(f"MISMATCH {where}: default {ours!r}, their files give {theirs!r}")
    if check.authors is not None:
        stage = getattr(model, "STAGE", None)
        by_stage = "authors_by_stage" in (field.json_schema_extra or {})
        known, recorded = authors_value(field, stage)
        if by_stage:
            recorded = field.json_schema_extra["authors_by_stage"]
        theirs = fmt(check.authors(*values))
        if not known and not by_stage:
            problems.append(f"MISMATCH {where}: no authors' value recorded, theirs is {theirs!r}")
        elif not _equal(recorded, theirs):
            problems.append(f"MISMATCH {where}: authors' value {recorded!r}, theirs {theirs!r}")
    return problems


def check_all(root: Path) -> tuple[list[str], list[str]]:
    """(lines ok, problems) over every checked field of every configuration model."""
    ok, problems = [], []
    for model in config_models():
        for name in model.model_fields:
            check = CHECKS.get((model.__name__, name))
            if check is not None:
                found = check_field(root, model, name, check)
                problems += found
                ok += [] if found else [f"ok {model.__name__}.{name}"]
    return ok, problems


def unchecked() -> list[str]:
    """Fields labelled authors' code whose default no check derives, and checks naming no
    field (a renamed knob)."""
    models = {model.__name__: model for model in config_models()}
    missing = [
        f"{model.__name__}.{name}: authors' code without a check of its default"
        for model in models.values()
        for name, field in model.model_fields.items()
        if getattr(provenance(field), "source", None) == AUTHORS_CODE
        and getattr(CHECKS.get((model.__name__, name)), "default", None) is None
    ]
    stale = [
        f"{model}.{name}: a check of no field"
        for model, name in CHECKS
        if model not in models or name not in models[model].model_fields
    ]
    return missing + stale


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.stderr.write(
            "usage: python -m magicapture_pipeline.config.authors_code PATH (a MagiCapture "
            "checkout)\n"
        )
        return 2
    ok, problems = check_all(Path(args[0]))
    sys.stdout.write("\n".join([*ok, *problems, f"{len(ok)} fields match, {len(problems)} "
                                "problems"]) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
