"""Example audiobench model plugin (see ``melcnn``)."""

__version__ = "0.1.0"
