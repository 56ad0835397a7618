"""BusReF models: geometry, the irvis-reg-v1 protocol, networks, losses, data, training, evaluation."""

from __future__ import annotations
