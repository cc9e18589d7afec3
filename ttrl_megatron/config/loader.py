"""Config loading: Hydra composition of conf/ -> unknown-key check -> typed dataclasses; writing the resolved config.

This module and `main.py` are the ONLY places that import hydra/omegaconf (imported inside the functions, so importing
`ttrl_megatron.config` stays cheap). Everything else receives dataclasses from `ttrl_megatron.config`.
"""

import dataclasses
import os
from pathlib import Path

import yaml

from .errors import ConfigError
from .sections import TTRLTrainerConfig

SCHEMA_NAME = "ttrl_trainer_schema"  # ConfigStore name of the root dataclass; conf/ttrl_trainer.yaml lists it first
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the repo's conf/ tree


def register_schema() -> None:
    """Register the root dataclass with Hydra's ConfigStore so composition type-checks every YAML key and override."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=TTRLTrainerConfig)


def compose(overrides: list[str] | None = None, config_name: str = "ttrl_trainer",
            config_dir: str | os.PathLike | None = None) -> TTRLTrainerConfig:
    """Compose `config_name` from `config_dir` (default: the repo's conf/) with Hydra overrides -> root dataclass.

    Unknown keys, wrong types and bad override syntax raise ConfigError naming the key. Does not call validate().
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    config_dir = Path(config_dir or CONF_DIR).resolve()
    if GlobalHydra.instance().is_initialized():  # a previous compose (tests) or @hydra.main left it set
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            composed = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except Exception as exc:  # hydra raises several types; all mean "this config does not compose"
        raise ConfigError(_describe(exc) + " (check the key and value against ttrl_megatron/config)") from exc
    return to_config(composed)


def to_config(composed) -> TTRLTrainerConfig:
    """A composed DictConfig (e.g. from @hydra.main) -> root dataclass; keys that are not dataclass fields raise."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    unknown = _unknown_keys(composed, TTRLTrainerConfig, "")
    if unknown:
        raise ConfigError([f"{k} is not a config key (typo, or a '+key=' override that adds one); remove it"
                           for k in unknown])
    try:
        cfg = OmegaConf.to_object(composed)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from exc
    if not isinstance(cfg, TTRLTrainerConfig):
        raise ConfigError(f"the composed config is a {type(cfg).__name__}, not TTRLTrainerConfig: list "
                          f"'{SCHEMA_NAME}' first in the YAML's defaults list")
    return cfg


def _unknown_keys(node, schema: type, prefix: str) -> list[str]:
    """Keys of `node` that `schema` lacks. Hydra's `+key=` forces new keys into a structured config and
    OmegaConf.to_object then drops them silently, so they are caught here. Free-form dict fields are not walked."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return []
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    hints = _field_types(schema)
    found = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in fields:
            found.append(path)
        elif dataclasses.is_dataclass(hints.get(key)):
            found += _unknown_keys(node[key], hints[key], path + ".")
    return found


def _field_types(schema: type) -> dict:
    import typing

    return typing.get_type_hints(schema)


def _describe(exc: BaseException) -> str:
    """Hydra wraps the real reason (e.g. a type error) in __cause__; keep both lines."""
    text = str(exc).strip()
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += ": " + str(cause).strip().replace("\n", " | ")
    return text


def save_resolved(cfg: TTRLTrainerConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as YAML to <run_dir>/config.yaml (creating run_dir); returns the file path."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, default_flow_style=False))
    return path
