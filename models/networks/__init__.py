"""BusReF networks: the bus (Reconstructor), AffineNet, DeformableNet, GAF, and their wiring."""

from __future__ import annotations

from models.networks.affine import AffineNet
from models.networks.busref import BusReF, Registration
from models.networks.deformable import DeformableNet
from models.networks.gaf import GAF
from models.networks.reconstructor import Features, Reconstructor

__all__ = ["GAF", "AffineNet", "BusReF", "DeformableNet", "Features", "Reconstructor", "Registration"]
