"""The whole method: its six steps (`steps.py`: 1 prepare, 2 learn, 3 invert, 4 interpolate, 5 denoise,
6 package), which the service's worker runs one shard at a time and `augment` (`augment.py`) runs all in
one process; `generate.py`'s `generate_share`, steps 4 and 5 by the job's method (`diffii_core.methods`)."""
