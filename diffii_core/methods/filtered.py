"""real-filter: real-guidance images kept only where a classifier trained on the real set predicts
their class. A rejected image is redrawn with the next attempt's seed, up to `filter_attempts`; when none
passes, the best-scoring attempt is kept and marked, so every class still gets its count."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from PIL import Image

from diffii_core.classifier import image_features
from diffii_core.errors import Cancelled
from diffii_core.methods.img2img import check_request, finish, plans_for, prompt_text, render
from diffii_core.methods.spec import MethodSpec, ShareRequest

if TYPE_CHECKING:
    from diffii_core.output import GeneratedImage


def generate_filtered(spec: MethodSpec, req: ShareRequest) -> Iterator[GeneratedImage]:
    check_request(spec, req)
    classifier = req.classifier
    if classifier is None:
        raise ValueError("method 'real-filter' needs a classifier trained on the real set")
    prompts = {req.label_index: prompt_text(spec, req, req.label_index)}
    for first in range(req.start, req.stop, req.batch_size):
        if req.should_stop is not None and req.should_stop():
            raise Cancelled(f"stopped before image {first} of class {req.class_name!r}")
        pending = list(range(first, min(req.stop, first + req.batch_size)))
        best: dict[int, tuple] = {}
        tries = dict.fromkeys(pending, 0)
        for attempt in range(req.params.filter_attempts):
            plans = plans_for(spec, req, pending, attempt)
            arrays = render(spec, req, plans, prompts)
            images = [Image.fromarray(a) for a in arrays]
            probs = classifier.probabilities(
                image_features(req.model, images, classifier.resolution, classifier.geometry)
            )
            for plan, array, row in zip(plans, arrays, probs, strict=True):
                score = float(row[req.label_index])
                passed = int(row.argmax()) == req.label_index
                tries[plan.index] += 1
                # A passing draw always wins; among failures, the best score is kept.
                if plan.index not in best or passed or score > best[plan.index][0]:
                    best[plan.index] = (score, passed, plan, array)
            pending = [i for i in pending if not best[i][1]]
            if not pending:
                break
        for index in sorted(best):
            score, passed, plan, array = best[index]
            extra = {"filter_score": round(score, 6), "filter_passed": passed}
            extra["filter_attempts"] = tries[index]
            yield finish(spec, req, plan, array, prompts[req.label_index], extra)
