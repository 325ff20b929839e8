"""Kedro's config loader with env layering: an env may extend another env.

Kedro merges ``base`` with ONE env; an env named in :data:`ENV_PARENTS` is read as its parent env
with its own files laid over it (parameters deep-merged, catalog entries replaced whole), so
``conf/demo-sdxl`` holds only what makes the demo an SDXL demo. ``settings.py`` installs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kedro.config import OmegaConfigLoader
from omegaconf import DictConfig, OmegaConf

# Env layering: Kedro merges `base` with ONE env; an env named here is read as its parent env
# with its own files laid over it (parameters deep-merged, catalog entries replaced whole), so
# `conf/demo-sdxl` holds only what makes the demo an SDXL demo.
ENV_PARENTS = {"demo-sdxl": "demo"}


class LayeredConfigLoader(OmegaConfigLoader):
    """Kedro's ``OmegaConfigLoader`` with one addition: an env may extend another env
    (``env_parents``, by default ``ENV_PARENTS``): base, then the parent, then the env."""

    env_parents: dict[str, str] = ENV_PARENTS

    def _read_dir_configs(
        self,
        conf_path: str,
        patterns: Iterable[str],
        key: str,
        processed_files: set,
        read_environment_variables: bool | None = False,
    ) -> dict[Path, DictConfig]:
        own = super()._read_dir_configs(
            conf_path, patterns, key, processed_files, read_environment_variables
        )
        parent = self.env_parents.get(Path(conf_path).name)
        if parent is None:
            return own
        inherited = self._read_dir_configs(
            str(Path(conf_path).parent / parent),
            patterns,
            key,
            processed_files,
            read_environment_variables,
        )
        if not inherited:
            return own
        layered = OmegaConf.unsafe_merge(*inherited.values()) if inherited else OmegaConf.create()
        mine = OmegaConf.unsafe_merge(*own.values()) if own else OmegaConf.create()
        if self.merge_strategy.get(key, "destructive") == "soft":
            layered = OmegaConf.unsafe_merge(layered, mine)
        else:  # destructive: an entry the env names replaces the parent's whole
            for name in mine:
                layered[name] = mine[name]
        return {Path(conf_path) / f"<{parent} + {Path(conf_path).name}>": layered}
