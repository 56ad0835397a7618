"""The shipped weights, as package data: ``busref.pt`` (the checkpoint) and its ONNX graphs
``register.onnx``, ``track.onnx``, ``fuse.onnx``, ``frame.onnx``; ``nir/``, the same for near-infrared
rigs. Found through :mod:`busref.rig_config.resources`, never by a path of their own."""
