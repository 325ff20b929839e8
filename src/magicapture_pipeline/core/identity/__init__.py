"""Faces as vectors: the recognizers that score identity (dlib, ArcFace ONNX) and the
differentiable ArcFace network of the identity loss (Eq. 7)."""
