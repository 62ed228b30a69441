"""Step 2 of Diff-II, inversion and interpolation: each class's DDIM inversions, and points on the great
circle through two of them.

- `ddim.py`           the model's schedule and the DDIM step (shared with denoising)
- `invert.py`         `invert_class(...)`: a class's inversion pool; `save_pool` / `load_pool`
- `interpolation.py`  `circle_interpolate`, the pair of an image index
"""
