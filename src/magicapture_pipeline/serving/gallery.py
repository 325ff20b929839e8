"""A static page per registered model to choose the champion by looking (issue 22).

Every shown version of ``magicapture-<concept>`` is sampled with the same prompts and seeds,
through the registered pyfunc (``serving.batch``: ``ConceptModel.predict`` ->
``core.generation.sample_image``, the sampling code of ``generate``), side by side with its
metrics (value, ``± 1.96·SE`` and ``n`` where ``metrics.json`` carries ``<metric>_se`` /
``<metric>_n``; ours: the normal 95 % interval of a mean) and the aliases it holds
(@champion, @candidate, @previous).

The folder (``index.html`` + ``images/v<version>_p<prompt>.png``, relative links) is written
whole (``core.atomic.staged_dir``). Every string on the page goes through ``html.escape``.
It is logged as the ``gallery/`` artifact of the registry step's run and written by
``make gallery CONCEPT=...`` (``python -m magicapture_pipeline.serving.gallery``) into
``data/08_reporting/<concept>/gallery/``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicapture_pipeline.core.atomic import staged_dir

GALLERY_ARTIFACT = "gallery"
PAGE = "index.html"
Z95 = 1.96  # ours: normal 95 % interval of a mean from its standard error
SUFFIXES = ("_se", "_n")


@dataclass
class VersionView:
    """One column of the page: a version, its aliases, metrics and one image per prompt."""

    version: int
    aliases: list[str]
    metrics: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    images: list[Any] = field(default_factory=list)


def metric_rows(metrics: Mapping[str, float]) -> list[tuple[str, float, float | None, int | None]]:
    """``(name, value, se, n)`` per metric; ``<name>_se`` / ``<name>_n`` fold into their metric."""
    rows = []
    for name in sorted(metrics):
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)
        if base is not None and base in metrics:
            continue
        se = metrics.get(f"{name}_se")
        n = metrics.get(f"{name}_n")
        rows.append((name, float(metrics[name]), se, int(n) if n is not None else None))
    return rows


def format_metric(value: float, se: float | None, n: int | None) -> str:
    """``0.512 ± 0.031 (n=64)``; the interval is ``± 1.96·SE``."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.4g}"
    if se is not None and math.isfinite(se):
        text += f" ± {Z95 * se:.2g}"
    if n is not None:
        text += f" (n={n})"
    return text


def image_name(version: int, prompt_index: int) -> str:
    return f"images/v{version}_p{prompt_index}.png"


def render_html(
    model_name: str, views: Sequence[VersionView], prompts: Sequence[str], seeds: Sequence[int]
) -> str:
    """The page: one column per version, one row per (prompt, seed), then the metrics."""
    e = html.escape
    names = sorted({m[0] for v in views for m in metric_rows(v.metrics)})
    head = "".join(
        f"<th>v{v.version}"
        + "".join(f' <span class="alias">@{e(a)}</span>' for a in v.aliases)
        + "</th>"
        for v in views
    )
    body = []
    for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        cells = "".join(
            f'<td><img src="{e(image_name(v.version, index))}" alt="v{v.version} {e(prompt)}"'
            ' width="256"></td>'
            for v in views
        )
        body.append(f'<tr><th class="prompt">{e(prompt)}<br>seed {int(seed)}</th>{cells}</tr>')
    for name in names:
        cells = ""
        for v in views:
            found = {m[0]: m for m in metric_rows(v.metrics)}.get(name)
            if found:
                cells += f"<td>{e(format_metric(*found[1:]))}</td>"
            else:
                cells += f"<td>{e(v.unavailable.get(name, '—'))}</td>"
        body.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
    title = e(f"{model_name}: versions side by side")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
        ".alias{background:#ffd54f;border-radius:3px;padding:0 3px}.prompt{max-width:260px}"
        f"</style></head><body><h1>{title}</h1>"
        "<p>Same prompts and seeds for every version; metrics as value ± 1.96·SE (n). "
        f"Promote with <code>make promote CONCEPT=... VERSION=n</code>.</p>"
        f"<table><tr><th>prompt / metric</th>{head}</tr>{''.join(body)}</table>"
        "</body></html>\n"
    )


def write_gallery(
    out_dir: str | Path,
    model_name: str,
    views: Sequence[VersionView],
    prompts: Sequence[str],
    seeds: Sequence[int],
) -> Path:
    """``index.html`` and the images beside it, swapped in whole. Returns the page's path."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as built:
        (built / "images").mkdir()
        for view in views:
            for index, image in enumerate(view.images):
                image.save(built / image_name(view.version, index))
        (built / PAGE).write_text(render_html(model_name, views, prompts, seeds), "utf-8")
    return out_dir / PAGE


def version_views(client: Any, model_name: str, max_versions: int) -> list[VersionView]:
    """The versions holding an alias and the newest ones, up to ``max_versions``, newest first."""
    from mlflow.exceptions import MlflowException

    from magicapture_pipeline.serving.promotion import version_metrics

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        raise LookupError(f"gallery: no registered model {model_name!r} ({error})") from error
    aliases: dict[int, list[str]] = {}
    for alias, number in registered.aliases.items():
        aliases.setdefault(int(number), []).append(alias)
    versions = sorted(
        client.search_model_versions(f"name='{model_name}'"), key=lambda v: -int(v.version)
    )
    chosen = [v for v in versions if int(v.version) in aliases]
    chosen += [v for v in versions if int(v.version) not in aliases]
    chosen = sorted(chosen[: max(max_versions, len(aliases))], key=lambda v: -int(v.version))
    views = []
    for v in chosen:
        metrics, unavailable = version_metrics(v.tags)
        views.append(
            VersionView(
                int(v.version),
                sorted(aliases.get(int(v.version), [])),
                metrics,
                unavailable,
                v.run_id,
            )
        )
    return views


@contextlib.contextmanager
def _environ(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` for one block (None: unchanged), then restored."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def sample_views(
    views: Sequence[VersionView],
    model_name: str,
    prompts: Sequence[str],
    seeds: Sequence[int],
    tracking_uri: str,
    project_root: str | Path | None = None,
) -> None:
    """Sample every version (its registered pyfunc) on the same prompts and seeds.

    ``project_root``: where a version's project-relative base model is looked for first.
    """
    import pandas as pd

    from magicapture_pipeline.serving.base_model import PROJECT_ROOT_ENV
    from magicapture_pipeline.serving.batch import load_registered, sample_table

    table = pd.DataFrame({"prompt": list(prompts), "seed": [int(s) for s in seeds]})
    for view in views:
        with _environ(PROJECT_ROOT_ENV, str(project_root) if project_root else None):
            model = load_registered(f"models:/{model_name}/{view.version}", tracking_uri)
        images, _ = sample_table(model, table, chunk_rows=1)
        view.images = [images[key] for key in sorted(images)]


def build_gallery(
    model_name: str,
    tracking_uri: str,
    out_dir: str | Path,
    prompts: Sequence[str],
    seeds: Sequence[int],
    max_versions: int = 4,
    run_id: str | None = None,
    project_root: str | Path | None = None,
) -> Path:
    """Sample, write ``out_dir`` and (with ``run_id``) log it as that run's ``gallery/``."""
    from magicapture_pipeline.tracking.store import tracking_client

    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"gallery: {len(prompts)} prompts and {len(seeds)} seeds (need one each)")
    client = tracking_client(tracking_uri, registry_uri=tracking_uri)
    views = version_views(client, model_name, max_versions)
    if not views:
        raise LookupError(f"gallery: registered model {model_name!r} has no version")
    sample_views(views, model_name, prompts, seeds, tracking_uri, project_root)
    page = write_gallery(out_dir, model_name, views, prompts, seeds)
    if run_id:
        client.log_artifacts(run_id, str(page.parent), GALLERY_ARTIFACT)
    return page


def gallery_rows(templates: Sequence[str], seed: int, count: int) -> tuple[list[str], list[int]]:
    """``count`` rows: the templates in turn (duplicates once), seeds ``seed + i``."""
    unique = list(dict.fromkeys(templates))
    if not unique:
        raise ValueError("gallery: no prompt to sample")
    return [unique[i % len(unique)] for i in range(count)], [seed + i for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    """``make gallery CONCEPT=...``: the page into ``data/08_reporting/<concept>/gallery/``."""
    from magicapture_pipeline.concepts import validate_concept_name
    from magicapture_pipeline.config.generation import GenerationConfig
    from magicapture_pipeline.tracking.uris import resolve_tracking_uri

    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.serving.gallery")
    parser.add_argument("--concept", required=True)
    parser.add_argument("--project", default=".")
    parser.add_argument("--prompt", action="append", help="[V1]/[V2] prompt (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first row (+1 each)")
    parser.add_argument("--rows", type=int, default=2, help="images per version")
    parser.add_argument("--max-versions", type=int, default=4)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    try:
        concept = validate_concept_name(args.concept)
    except ValueError as error:
        sys.stderr.write(f"gallery refused: {error}\n")
        return 2
    project = Path(args.project).resolve()
    templates = args.prompt or GenerationConfig().prompt_templates
    prompts, seeds = gallery_rows(templates, args.seed, args.rows)
    out = Path(args.out) if args.out else project / "data/08_reporting" / concept / "gallery"
    uri = resolve_tracking_uri(project, args.tracking_uri)
    try:
        page = build_gallery(
            f"magicapture-{concept}",
            uri,
            out,
            prompts,
            seeds,
            args.max_versions,
            project_root=project,
        )
    except (LookupError, ValueError, OSError) as error:
        sys.stderr.write(f"gallery failed: {error}\n")
        return 1
    sys.stdout.write(f"{page}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
