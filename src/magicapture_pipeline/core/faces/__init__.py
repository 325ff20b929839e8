"""Faces in, training set out: robust decoding, detection and mesh, crops and masks, the set's
validation, and the demo's public-domain photos."""
