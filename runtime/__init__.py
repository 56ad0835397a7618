"""The rig runtime: capture, pairing, registration, fusion, publishing. Never imports torch."""

from __future__ import annotations
