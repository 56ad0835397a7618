"""The shipped weights, as package data: ``busref.pt`` (the checkpoint), ``descriptor.pt`` (the
refinement's cross-modal descriptor) and their ONNX graphs ``register.onnx``, ``fuse.onnx``,
``frame.onnx``. Found through :mod:`busref.rig_config.resources`, never by a path of their own."""
