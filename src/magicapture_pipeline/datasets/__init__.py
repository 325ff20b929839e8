"""Custom Kedro datasets (one module each) where kedro-datasets has none.

Catalog entries name them by module, e.g.
``magicapture_pipeline.datasets.raw_images.RawImageFolderDataset``.
"""
