"""diffii_core: the Diff-II augmentation engine as a library (no web, queue or database imports)."""

__version__ = "0.1.0"
