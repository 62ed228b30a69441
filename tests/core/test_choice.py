"""`method: "auto"`: the candidates, their leave-one-real-image-out score (no synthetic image made from
the held-out image is ever seen), the cost it adds, its bad inputs, and `diffii augment --method auto`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from diffii_core.candidates import CANDIDATES, candidate_params
from diffii_core.params import AUTO_DEFAULTS, AUTO_SETS, AUTO_UNUSED, JobParams
from diffii_core.pipeline import choice
from diffii_core.pipeline.choice import Scored, leave_one_out
from diffii_core.planning import choice_cost, job_cost
from tests.core.test_augment_cli import FAST, run_cli


def _crafted() -> tuple[Scored, Scored]:
    """Six real images, each alone on a feature of its own, so no other image tells its class; each has
    five synthetic twins at its own features, with its own class, made from it and a partner of its
    class (a pair's image names both sources, as Diff-II's do). Only a classifier that saw the held-out
    image's twins could name its class."""
    real_y = [0, 0, 0, 1, 1, 1]
    names = [f"c{y}/{i}.png" for i, y in enumerate(real_y)]
    real = Scored(torch.eye(6, dtype=torch.float64), real_y, [frozenset([n]) for n in names])
    twins = [i for i in range(6) for _ in range(5)]
    partner = [(i + 1) % 3 + 3 * (i // 3) for i in range(6)]
    synthetic = Scored(
        real.features[twins],
        [real_y[i] for i in twins],
        [frozenset([names[i], names[partner[i]]]) for i in twins],
    )
    return real, synthetic


def test_leave_one_out_never_trains_on_an_image_made_from_the_held_out_one(monkeypatch) -> None:
    real, synthetic = _crafted()
    seen: list[torch.Tensor] = []
    fit = choice.fit_features

    def spy(features, labels, classes, resolution, geometry):
        seen.append(features.clone())
        return fit(features, labels, classes, resolution, geometry)

    monkeypatch.setattr(choice, "fit_features", spy)
    correct = leave_one_out(real, synthetic, 2)
    assert len(seen) == 6
    for i, features in enumerate(seen):
        kept = [k for k, s in enumerate(synthetic.names) if not s & real.names[i]]
        assert len(synthetic.names) - len(kept) == 10  # its own five twins, and its partner's five
        # Trained on exactly the other real images and the synthetic images that do not name i ...
        assert features.shape[0] == 5 + len(kept)
        assert not (features == real.features[i]).all(1).any()  # ... so on neither it nor its twins
    # Leaked, the twins would give every held-out image away (below); unseen, they give none.
    assert correct == 0 == leave_one_out(real, None, 2)


def test_a_leak_would_show() -> None:
    """The crafted set does tell: with the twins named after other images, they stay in training and
    every held-out image is predicted right."""
    real, synthetic = _crafted()
    leaky = Scored(
        synthetic.features, synthetic.labels, [frozenset(["elsewhere.png"])] * len(synthetic.labels)
    )
    assert leave_one_out(real, leaky, 2) == 6


def test_candidates_share_the_jobs_concepts_and_its_counts() -> None:
    params = JobParams(method="auto", model="world", expansion=3, seed=5)
    for candidate in CANDIDATES:
        chosen = candidate_params(params, candidate)
        assert chosen.method == candidate.overrides["method"]
        assert chosen.spec.concepts == "lora+tokens" and chosen.concepts == params.concepts
        assert (chosen.expansion, chosen.fill_pool_to, chosen.seed) == (3, 0, 5)
    by_name = {c.name: candidate_params(params, c) for c in CANDIDATES}
    assert by_name["diff-ii"].guidance_scale == 4.0 and by_name["diff-mix@0.7"].strength == [0.7]
    assert len({c.name for c in CANDIDATES}) == len(CANDIDATES)


def test_the_choice_cost_follows_the_documented_formula() -> None:
    params = JobParams(
        method="auto", model="tiny", inference_steps=10, inversion_steps=4, concepts={"steps": 7}
    )
    counts = [3, 2]
    n, k = sum(counts), len(CANDIDATES)
    inverting = sum(candidate_params(params, c).spec.inversion for c in CANDIDATES)
    share = k * n * 10 + inverting * n * 4
    assert choice_cost(params, counts) == share + (k + 1) * n
    learn = 7 * params.concepts.batch_size * params.concepts.gradient_accumulation
    dearest = 5 * n * 10 + n * 4  # Diff-II: its images and its inversions
    assert job_cost(params, counts) == learn + dearest + share + (k + 1) * n
    assert choice_cost(JobParams(model="tiny"), counts) == 0


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"strength": 0.7}, "method auto sets strength per candidate"),
        ({"guidance_scale": 4}, "method auto sets guidance_scale per candidate"),
        ({"sampler": "dpm-solver++"}, "method auto sets sampler per candidate"),
        ({"fill_pool_to": 3}, "method auto.s candidates take no fill_pool_to"),
        ({"filter_attempts": 2}, "method auto.s candidates take no filter_attempts"),
    ],
)
def test_auto_refuses_a_field_its_candidates_set_or_never_read(field, message) -> None:
    assert {f: JobParams.model_fields[f].default for f in AUTO_DEFAULTS} == AUTO_DEFAULTS
    assert set(AUTO_DEFAULTS) == {*AUTO_SETS, *AUTO_UNUSED}
    with pytest.raises(ValidationError, match=message):
        JobParams(method="auto", **field)
    stored = JobParams(method="auto").model_dump(mode="json")
    assert JobParams.model_validate(stored).method == "auto"  # a stored job reads back


def test_diffii_augment_method_auto_writes_the_choice_into_job_json(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto.zip"
    done = run_cli("augment", sample_dir, "--out", out, "--method", "auto", "--expansion", "1", *FAST)
    with zipfile.ZipFile(out) as zf:
        job = json.loads(zf.read("job.json"))
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
    made = job["choice"]
    assert made["chosen"] in done.stdout
    names = [c.name for c in CANDIDATES]
    assert [c["name"] for c in made["candidates"]] == names
    scores = [c["correct"] for c in made["candidates"]]
    assert names.index(made["chosen"]) == scores.index(max(scores))  # the best, the earliest on a tie
    assert made["images_per_candidate"] == 12 == len(pngs)
    assert 0 <= made["real_only"]["score"] <= 1 and made["extra_cost"] > 0
    # The images were made by the chosen candidate, whose parameters job.json holds.
    chosen = dict(CANDIDATES[names.index(made["chosen"])].overrides)
    assert {k: job["params"][k] for k in chosen} == chosen

    refused = run_cli("augment", sample_dir, "--out", tmp_path / "x.zip", "--method", "auto",
                      "--strength", "0.7", *FAST, ok=False)  # fmt: skip
    assert refused.returncode != 0 and "method auto sets strength per candidate" in refused.stderr
    assert not (tmp_path / "x.zip").exists()
