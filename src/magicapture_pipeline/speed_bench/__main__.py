"""``python -m magicapture_pipeline.speed_bench`` (``make bench``)."""

from magicapture_pipeline.speed_bench.report import main

if __name__ == "__main__":
    main()
