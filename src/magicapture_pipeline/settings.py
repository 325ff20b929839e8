"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from __future__ import annotations

from magicapture_pipeline.concepts import validate_concept_name
from magicapture_pipeline.config.loader import LayeredConfigLoader
from magicapture_pipeline.hooks.concept import ConceptLockHook, ProgressHook
from magicapture_pipeline.hooks.parameter_check import ParameterCheckHook
from magicapture_pipeline.hooks.stop import StopSignalHook
from magicapture_pipeline.tracking.hook import MlflowTrackingHook

# ParameterCheckHook: every parameter section the run reads is checked before the first node.
# MlflowTrackingHook: the one place MLflow is touched (one run per `kedro run`, explicit run id).
# ConceptLockHook: one live run per concept; it runs before the tracking hook (tryfirst), so a
# refused run starts no MLflow run. ProgressHook: the running stage, for `make batch`'s live table.
# Order matters: pluggy calls tryfirst hooks last-registered first, and Kedro calls
# `on_pipeline_error` only for errors raised after `before_pipeline_run`. ParameterCheckHook is
# registered after ConceptLockHook so it refuses a bad knob before the lock is taken (the other
# way round, a refused run left `data/.locks/<concept>.lock` behind). StopSignalHook: SIGTERM/SIGINT
# close the run (MLflow KILLED, lock released) and the process still dies by the signal; its
# `on_pipeline_error` is trylast, so every other hook has closed what it opened first.
HOOKS = (
    ConceptLockHook(), ParameterCheckHook(), MlflowTrackingHook(), ProgressHook(), StopSignalHook()
)

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
