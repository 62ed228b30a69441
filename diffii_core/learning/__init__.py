"""Step 2 of the method, learn: each class's placeholder tokens and one shared LoRA (category concept
learning). The steps are numbered once, in `diffii_core.pipeline.steps` and docs/methods.md.

- `training.py`        `learn_concepts(model, dataset, params)` (the published recipe, as numbered steps)
- `concepts.py`        the `Concepts` artefact and `concepts_applied(model, concepts)`, its scope on a model
- `concept_import.py`  the published Diff-Mix concepts layout read as `Concepts`
"""
