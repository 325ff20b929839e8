"""``python -m magicapture_pipeline.export``: a concept as files for diffusers, ComfyUI,
AUTOMATIC1111 and Forge, with its model card (``make export``; the README section "Use the
concept in ComfyUI / AUTOMATIC1111").

From the concept folder ``data/06_models/<concept>/concept`` (metrics from
``data/08_reporting/<concept>/metrics.json``) or, with ``--alias``, from the registered version
``models:/magicapture-<concept>@<alias>`` (its sampling settings and its run's metrics). Writes
``data/06_models/<concept>/export`` (``export-<alias>`` for a registered version), whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from magicapture_pipeline.concepts import validate_concept_name
from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.core.generation.kohya import FORMATS, ExportRefused, export_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.export")
    parser.add_argument("--concept", required=True, help="the concept's name")
    parser.add_argument("--alias", default=None, help="a registered version's alias")
    parser.add_argument("--format", default="all", choices=FORMATS)
    parser.add_argument("--project", default=".", help="the project folder (default: here)")
    parser.add_argument("--out", default=None, help="target folder (default under data/06_models)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (with --alias)")
    args = parser.parse_args(argv)
    try:
        concept = validate_concept_name(args.concept)
    except ValueError as error:
        sys.stderr.write(f"export refused: {error}\n")
        return 2
    project = Path(args.project).resolve()
    models = project / "data" / "06_models" / concept
    suffix = f"-{args.alias}" if args.alias else ""
    out = Path(args.out) if args.out else models / f"export{suffix}"
    try:
        with tempfile.TemporaryDirectory(prefix="magicapture-export-") as tmp:
            if args.alias:
                from magicapture_pipeline.serving.export_source import registered_concept
                from magicapture_pipeline.tracking.uris import resolve_tracking_uri

                uri = resolve_tracking_uri(project, args.tracking_uri)
                folder, sampling, metrics = registered_concept(
                    f"magicapture-{concept}", args.alias, Path(tmp), uri
                )
                config = SamplingConfig.model_validate(sampling) if sampling else None
            else:
                folder, config = models / "concept", None
                metrics_file = project / "data" / "08_reporting" / concept / "metrics.json"
                metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
                if not folder.is_dir():
                    raise ExportRefused(f"{folder}: no concept folder (train it first)")
            grid = project / "data" / "08_reporting" / concept / "generation_grid.png"
            done = export_bundle(folder, out, concept, args.format, config, metrics, grid)
    except (ExportRefused, LookupError) as error:
        sys.stderr.write(f"export refused: {error}\n")
        return 2
    sys.stdout.write(json.dumps(done, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
