"""Step 5 of the method, denoise: the samplers and prompts that Diff-II's two-stage denoising
(`methods/diff_ii.py`) and the baselines' img2img / text-to-image sampler (`methods/img2img.py`) run on.
The steps are numbered once, in `diffii_core.pipeline.steps` and docs/methods.md.

- `sampling.py`          DDIM / DPM-Solver++ on the model's schedule, two-stage prompts, guidance
- `prompts.py`           concept and class-name prompts, their text embeddings
- `suffixes.py`          the suffixes of each dataset theme
- `unet.py`              one UNet prediction, padded so that no row depends on the batch it ran in
"""
