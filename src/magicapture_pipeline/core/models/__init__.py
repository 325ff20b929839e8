"""The base model: loading (SD 1.5 / SDXL), the family adapter, placeholder tokens, attention
capture for Eq. 8, devices, and the tiny random builders the demos and tests use."""
