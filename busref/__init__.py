"""busref: the one command-line entry point of the BusReF rig service.

The import packages are ``models`` (training side, needs torch), ``export`` (the bridge),
``runtime`` (the daemon, no torch) and ``rig_config`` (rig files). This package only holds
the dispatcher so that ``busref run`` never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
