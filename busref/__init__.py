"""busref: real-time infrared-visible registration and fusion for camera rigs.

One installed package with these parts (the source folders keep short names, see pyproject.toml):

* ``busref.client``: read the published stream with pyzmq and numpy only (``busref[client]``);
* ``busref.runtime``: the rig daemon, no torch (``busref[runtime]``);
* ``busref.rig_config``: rig files, and where the shipped weights and rigs are;
* ``busref.models``: networks, training and evaluation, needs torch (``busref[train]``);
* ``busref.export``: checkpoint -> ONNX -> TensorRT;
* ``busref.conventions``: the conventions all parts share (grids, graph contract, image reading).

This module holds only the version, and :mod:`busref.cli` the dispatcher, so that ``busref run``
never imports torch and ``import busref.client`` imports nothing else.
"""

from __future__ import annotations

__version__ = "0.1.0"
