"""Classical (non-learned) baselines, scored with the same protocol as BusReF."""

from __future__ import annotations
