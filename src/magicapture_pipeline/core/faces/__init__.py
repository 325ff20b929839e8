"""Faces in, training set out: robust decoding, detection and mesh, crops and masks, the set's
analysis and validation, the face-set type training and evaluation read, faces in generated
images, and the demo's public-domain photos."""
