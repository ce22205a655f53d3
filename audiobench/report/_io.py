"""Atomic file writes for the report: the one writer of :mod:`audiobench.fileio`."""

from audiobench.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401

__all__ = ["atomic_write_bytes", "atomic_write_text"]
