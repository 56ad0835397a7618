"""Evaluation metrics in numpy/OpenCV (no torch): registration (``registration``) and fusion (``fusion``)."""

from __future__ import annotations
