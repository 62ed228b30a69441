"""The fair race's rules in `bench/draws.py`: every method gets five settings, stage 2 follows stage 1's
better guidance, and a method's development best is named only once its five rows are measured."""

from __future__ import annotations

from collections import Counter

from bench.draws import RACE_SETTINGS, race_best, race_row, race_stage1, race_stage2


def _rows(gains: dict[str, float]) -> dict[str, dict[str, float]]:
    return {label: {"mean": gain} for label, gain in gains.items()}


def test_every_method_gets_the_same_five_settings() -> None:
    stage1 = race_stage1()
    stage2 = race_stage2({v.label: 0.0 for v in stage1})
    counts = Counter(v.method for v in (*stage1, *stage2))
    assert counts == dict.fromkeys(RACE_SETTINGS, 5)
    assert len({v.label for v in (*stage1, *stage2)}) == len(stage1) + len(stage2)


def test_stage_2_takes_each_methods_better_guidance_and_the_published_on_a_tie() -> None:
    gains = {v.label: 0.0 for v in race_stage1()}
    gains[race_row("diff-mix", "4", "s=0.7").label] = 0.05
    rows = race_stage2(gains)
    assert {v.args[1] for v in rows if v.method == "diff-mix"} == {"4"}
    assert {v.args[1] for v in rows if v.method == "diff-aug"} == {"7.5"}  # level: the published
    assert {v.args[1] for v in rows if v.method == "diff-gen"} == {"2.5", "5.5", "10"}


def test_the_development_best_waits_for_all_five_rows_and_then_takes_the_highest() -> None:
    stage1 = {v.label: 0.01 for v in race_stage1()}
    half = dict(list(stage1.items())[:-1])
    assert all(missing[-1] == "stage 2" and best is None for _, _, best, missing in race_best(_rows(half)))
    for method, _, best, missing in race_best(_rows(stage1)):
        assert best is None and missing == [v.label for v in race_stage2(stage1) if v.method == method]

    stage2 = {v.label: 0.02 for v in race_stage2(stage1)}
    top = race_row("diff-mix", "7.5", "s=u")
    stage2[top.label] = 0.03
    del stage2[race_row("diff-gen", "10").label]
    after = {m: (best, missing) for m, _, best, missing in race_best(_rows({**stage1, **stage2}))}
    assert after["diff-mix"] == (top, [])
    assert after["diff-gen"] == (None, ["diff-gen cfg=10"])
    # A tie goes to the earlier row: Diff-II's stage-2 rows tie at 0.02, so split 0.1 is its best.
    assert after["diff-ii"][0] == race_row("diff-ii", "7.5", "split=0.1")


def test_a_tie_with_the_published_row_keeps_the_published() -> None:
    stage1 = {v.label: 0.01 for v in race_stage1()}
    stage2 = {v.label: 0.0 for v in race_stage2(stage1)}
    best = {m: b for m, _, b, _ in race_best(_rows({**stage1, **stage2}))}
    assert best["real-guidance"] == race_row("real-guidance", "7.5", "s=0.7")
