"""Step 3 of Diff-II, denoising: from a start latent to an image, with the prompt the method asks for.

- `generate.py`          `generate_share(...)`: images [start, stop) of a class by the job's method
- `sampling.py`          DDIM / DPM-Solver++ on the model's schedule, two-stage prompts, guidance
- `prompts.py`           concept and class-name prompts, their text embeddings
- `suffixes.py`          the suffixes of each dataset theme
- `unet.py`, `batch_invariance.py`  networks whose rows do not depend on the batch they ran in
"""
