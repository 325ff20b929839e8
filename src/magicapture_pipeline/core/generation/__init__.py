"""A trained concept in use: sampling, the exported concept folder, post-processing
(super-resolution, face restoration) and provenance."""
