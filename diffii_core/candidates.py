"""The recipes `method: "auto"` chooses among, in one place: the methods that share the job's learned
concepts (tokens and one LoRA), each at its model's and preset's defaults, and the img2img ones at a few
strengths. Each is a set of parameter overrides over the job's own parameters; the choice itself is
`diffii_core.pipeline.choice`, its cost `diffii_core.planning.job_cost`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffii_core.params import AUTO, AUTO_SETS, JobParams


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


# In order: a tie in score goes to the earlier candidate.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("diff-ii", {"method": "diff-ii"}),
    Candidate("diff-mix@0.5", {"method": "diff-mix", "strength": [0.5]}),
    Candidate("diff-mix@0.7", {"method": "diff-mix", "strength": [0.7]}),
    Candidate("diff-mix@0.9", {"method": "diff-mix", "strength": [0.9]}),
    Candidate("diff-aug@0.5", {"method": "diff-aug", "strength": [0.5]}),
    Candidate("diff-gen", {"method": "diff-gen"}),
)


def candidate_params(params: JobParams, candidate: Candidate) -> JobParams:
    """The job's parameters with the candidate's recipe: what the job runs when the candidate is chosen.
    Fields the candidate leaves (sampler, guidance) take its method's and model's defaults; the concept
    parameters stay the job's, so every candidate reads the same learned concepts."""
    if params.method != AUTO:
        raise ValueError(f"only a job of method {AUTO!r} has candidates, not {params.method!r}")
    data = params.model_dump(mode="json", exclude={"method", *AUTO_SETS})
    return JobParams.model_validate({**data, **candidate.overrides})
