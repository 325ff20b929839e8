"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kedro.config import OmegaConfigLoader
from omegaconf import DictConfig, OmegaConf

from magicapture_pipeline.check_config import ParameterCheckHook
from magicapture_pipeline.concepts import validate_concept_name
from magicapture_pipeline.hooks.concept import ConceptLockHook, ProgressHook
from magicapture_pipeline.tracking.hook import MlflowTrackingHook

# ParameterCheckHook: every parameter section the run reads is checked before the first node.
# MlflowTrackingHook: the one place MLflow is touched (one run per `kedro run`, explicit run id).
# ConceptLockHook: one live run per concept; it runs before the tracking hook (tryfirst), so a
# refused run starts no MLflow run. ProgressHook: the running stage, for `make batch`'s live table.
# Order matters: pluggy calls tryfirst hooks last-registered first, and Kedro calls
# `on_pipeline_error` only for errors raised after `before_pipeline_run`. ParameterCheckHook is
# registered after ConceptLockHook so it refuses a bad knob before the lock is taken (the other
# way round, a refused run left `data/.locks/<concept>.lock` behind).
HOOKS = (ConceptLockHook(), ParameterCheckHook(), MlflowTrackingHook(), ProgressHook())

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


CONFIG_LOADER_CLASS = LayeredConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # `conf/demo/parameters_*.yml` only overrides the keys it names (deep merge), so the demo env
    # inherits every default it does not shrink.
    "merge_strategy": {"parameters": "soft"},
    # ${valid_concept:name}: the concept name, or an error naming the rule (before any I/O).
    "custom_resolvers": {"valid_concept": validate_concept_name},
}
