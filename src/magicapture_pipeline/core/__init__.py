"""The MagiCapture method, importable without Kedro.

One module per concern: ``images`` (robust decoding), ``faces`` (detection, mesh, masks),
``identity`` (face embeddings), ``models`` (SD components), ``tokens`` ([V1]/[V2]),
``attention`` (cross-attention capture), ``losses`` (Eq. 4-8), ``training`` (stage one and two),
``concept`` (export/import), ``generation``, ``postprocess`` and ``metrics``.
"""
