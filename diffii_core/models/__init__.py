"""The model a job runs on: `load_model(name, models)` -> `LoadedModel` (`loader.py`); the built-in
`tiny` models (`tiny.py`); the model's noise schedule and DDIM step that inversion, denoising and
learning share (`ddim.py`); networks made batch-invariant as they load (`batch_invariance.py`). It is
the bottom layer of the engine: it imports none of the method's steps."""

from diffii_core.models.loader import LoadedModel, load_model, pick_device

__all__ = ["LoadedModel", "load_model", "pick_device"]
