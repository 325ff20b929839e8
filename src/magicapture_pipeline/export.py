"""``python -m magicapture_pipeline.export``: a concept as files for diffusers, ComfyUI,
AUTOMATIC1111 and Forge, with its model card (``make export``; the README section "Use the
concept in ComfyUI / AUTOMATIC1111").

From the concept folder ``data/06_models/<concept>/concept`` (metrics from
``data/08_reporting/<concept>/metrics.json``, the grid from ``generation_grid.png`` beside it)
or, with ``--alias`` / ``--model-version``, from the registered version of
``magicapture-<concept>`` (its sampling settings, its run's metrics and grid). Writes
``data/06_models/<concept>/export`` (``export-<alias>`` / ``export-v<N>`` for a registered
version), whole. ``kedro run --pipelines=export`` does the same through the catalog
(``pipelines/export``); both build the request with ``serving.export_source.export_request``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from magicapture_pipeline.concepts import validate_concept_name
from magicapture_pipeline.config.export import EXPORT_FORMATS, ExportConfig
from magicapture_pipeline.core.generation.bundle import local_source
from magicapture_pipeline.core.generation.kohya import ExportRefused


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.export")
    parser.add_argument("--concept", required=True, help="the concept's name")
    parser.add_argument("--alias", default=None, help="a registered version's alias")
    parser.add_argument("--model-version", type=int, default=None, help="a registered version")
    parser.add_argument("--format", default="all", choices=EXPORT_FORMATS)
    parser.add_argument("--project", default=".", help="the project folder (default: here)")
    parser.add_argument("--out", default=None, help="target folder (default under data/06_models)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (registered versions)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="after writing, load the kohya files and the diffusers folder into two stock "
        "pipelines and print the largest pixel difference (needs the base model)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        concept = validate_concept_name(args.concept)
        config = ExportConfig(
            format=args.format, alias=args.alias, model_version=args.model_version
        )
    except (ValueError, ValidationError) as error:
        sys.stderr.write(f"export refused: {error}\n")
        return 2
    from magicapture_pipeline.serving.export_source import export_request
    from magicapture_pipeline.tracking.uris import resolve_tracking_uri

    project = Path(args.project).resolve()
    models = project / "data" / "06_models" / concept
    reports = project / "data" / "08_reporting" / concept
    out = Path(args.out) if args.out else models / config.folder_name()
    records = project / "data" / "07_model_output" / concept / "generation_records.csv"
    local = local_source(
        models / "concept",
        reports / "metrics.json",
        reports / "generation_grid.png",
        records_file=records,
        root=project,
    )
    uri = resolve_tracking_uri(project, args.tracking_uri) if config.registered else None
    try:
        request = export_request(concept, config, local, f"magicapture-{concept}", uri)
        done = request.write(out)
    except (ExportRefused, LookupError) as error:
        sys.stderr.write(f"export refused: {error}\n")
        return 2
    if args.verify:
        from magicapture_pipeline.core.generation.kohya_check import compare_exports

        try:
            done["verify"] = compare_exports(Path(done["out"]), root=project)
        except ExportRefused as error:
            sys.stderr.write(f"verify refused: {error}\n")
            return 2
    sys.stdout.write(json.dumps(done, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
