"""Step 1 of Diff-II, concept learning: each class's placeholder tokens and one shared LoRA.

- `training.py`        `learn_concepts(model, dataset, params)` (the published recipe)
- `concepts.py`        the `Concepts` artefact and `concepts_applied(model, concepts)`, its scope on a model
- `concept_import.py`  the published Diff-Mix concepts layout read as `Concepts`
"""
