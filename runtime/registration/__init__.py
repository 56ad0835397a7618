"""Registration of the IR stream onto the RGB stream, in three parts:

* :mod:`~busref.runtime.registration.geometry`: how to warp: the prior, the network's
  coordinates, the ``register`` graph's inputs and outputs, the warp maps;
* :mod:`~busref.runtime.registration.plausibility`: what to trust: plausibility checks,
  hold-last-good, smoothing;
* :mod:`~busref.runtime.registration.scheduler`: when to estimate: the graph on its own thread.
"""
