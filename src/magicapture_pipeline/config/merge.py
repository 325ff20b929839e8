"""The package's one deep merge of nested parameter mappings.

Used wherever one layer of parameters lies over another: a benchmark variant's stage overrides
over the run's stage (``config/sections.py``, ``core/evaluation/baselines.py``) and a recipe under
what the user set (``config/recipes.py``: the user's mapping merged over the recipe's).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it: nested mappings merge key by key, anything else
    in ``override`` replaces ``base``'s value. Neither argument is modified."""
    out = {key: copy.deepcopy(value) for key, value in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
