"""The model a job runs on: `load_model(name, registry)` -> `LoadedModel` (`loader.py`); the built-in
`tiny` models (`tiny.py`)."""

from diffii_core.models.loader import LoadedModel, load_model, pick_device

__all__ = ["LoadedModel", "load_model", "pick_device"]
