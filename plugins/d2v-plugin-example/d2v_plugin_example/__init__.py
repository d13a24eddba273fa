"""Example d2v plugin: the ``vectors`` modality, the smallest complete modality (see docs/plugin-guide.md)."""

__version__ = "0.1.0"
