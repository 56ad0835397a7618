"""Rig configuration: pydantic models of a camera rig and the YAML files that describe one."""

from __future__ import annotations

from rig_config.loader import DEMO_RIG, RigConfigError, load_rig, parse_rig
from rig_config.schema import RigConfig, default_model_path

__all__ = ["DEMO_RIG", "RigConfig", "RigConfigError", "default_model_path", "load_rig", "parse_rig"]
