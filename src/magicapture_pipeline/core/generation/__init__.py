"""A trained concept in use: the generate and postprocess steps, sampling, the exported concept
folder, post-processing (super-resolution, face restoration) and provenance."""
