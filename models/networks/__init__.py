"""BusReF networks: the bus (Reconstructor), AffineNet, DeformableNet, GAF, and their wiring."""

from __future__ import annotations

from busref.models.networks.affine import AffineNet
from busref.models.networks.busref import BusReF, Registration
from busref.models.networks.deformable import DeformableNet
from busref.models.networks.gaf import GAF
from busref.models.networks.reconstructor import Features, Reconstructor

__all__ = ["GAF", "AffineNet", "BusReF", "DeformableNet", "Features", "Reconstructor", "Registration"]
