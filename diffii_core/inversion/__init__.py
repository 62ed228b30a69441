"""Step 3 of the method, invert: each class's DDIM inversions; and the great-circle geometry that step 4
(random circle interpolation, `methods/diff_ii.py`) draws its start latents from. The steps are numbered
once, in `diffii_core.pipeline.steps` and docs/methods.md.

- `invert.py`         `invert_class(...)`: a class's inversion pool (the DDIM step is the model's,
                      `models/ddim.py`); `save_pool` / `load_pool`
- `interpolation.py`  `circle_interpolate`, the pair of an image index
"""
