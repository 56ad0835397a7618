"""Rig configuration: pydantic models of a camera rig and the YAML files that describe one."""

from __future__ import annotations

from busref.rig_config.loader import RigConfigError, load_rig, parse_rig
from busref.rig_config.resources import DEMO_RIG, default_model_path, rig_file, weight_file, weights_dir
from busref.rig_config.schema import RigConfig

__all__ = [
    "DEMO_RIG",
    "RigConfig",
    "RigConfigError",
    "default_model_path",
    "load_rig",
    "parse_rig",
    "rig_file",
    "weight_file",
    "weights_dir",
]
