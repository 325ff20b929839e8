"""``python -m magicapture_pipeline.batch`` (see :mod:`magicapture_pipeline.batch.cli`)."""

from magicapture_pipeline.batch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
