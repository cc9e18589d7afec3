"""Typed configuration of the TTRL trainer: dataclass sections, validate(), and Hydra composition.

Import from here: `from ttrl_megatron.config import TTRLTrainerConfig, compose, validate, ConfigError, ...`.
Defaults live only on the dataclasses (sections.py, model_sections.py, rollout_sections.py); YAML in conf/ only sets values.
Only `loader.py` touches hydra/omegaconf (lazily, inside its functions); the rest of the package gets dataclasses.
"""

from .errors import ConfigError
from .loader import compose, register_schema, save_resolved, to_config
from .model_sections import (ActorConfig, CheckpointConfig, CriticConfig, CriticModelConfig, FsdpCompatConfig,
                             MegatronConfig, ModelConfig, OptimConfig, PolicyLossConfig, RefConfig, RoleMegatronConfig)
from .names import adv_estimator_names, need_critic, need_reference_policy, policy_loss_names
from .rollout_sections import RolloutConfig, SyncConfig, ValKwargsConfig
from .sections import (ActorRolloutRefConfig, AlgorithmConfig, CustomRewardFunctionConfig, DataConfig,
                       FilterGroupsConfig, GrpoNsrConfig, KLCtrlConfig, OverlongBufferConfig, PsrNsrConfig,
                       RewardModelConfig, RolloutCorrectionConfig, TrainerConfig, TTRLConfig, TTRLTrainerConfig,
                       WatchdogConfig)
from .validate import validate

__all__ = [
    "ConfigError", "compose", "register_schema", "save_resolved", "to_config", "validate",
    "need_critic", "need_reference_policy", "adv_estimator_names", "policy_loss_names",
    "TTRLTrainerConfig", "DataConfig", "ActorRolloutRefConfig", "ModelConfig", "ActorConfig", "RefConfig",
    "RolloutConfig", "ValKwargsConfig", "SyncConfig", "OptimConfig", "MegatronConfig", "RoleMegatronConfig",
    "FsdpCompatConfig", "PolicyLossConfig", "CheckpointConfig", "CriticConfig", "CriticModelConfig",
    "AlgorithmConfig", "KLCtrlConfig", "GrpoNsrConfig", "PsrNsrConfig", "CustomRewardFunctionConfig",
    "RewardModelConfig", "TTRLConfig", "TrainerConfig", "FilterGroupsConfig", "RolloutCorrectionConfig",
    "OverlongBufferConfig", "WatchdogConfig",
]
