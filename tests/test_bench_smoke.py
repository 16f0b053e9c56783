"""The benchmark scripts import without their baselines installed and parse their arguments.

Benchmarks are not tests (they run by hand or with `make bench`); this only keeps them from rotting.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        yield {name: importlib.import_module(name) for name in ("run_all", "phase1_distill", "phase2_contrastive")}
    finally:
        sys.path.remove(str(BENCH))


def test_phase_scripts_parse_their_recipes(bench_modules):
    phase1, phase2 = bench_modules["phase1_distill"], bench_modules["phase2_contrastive"]
    for recipe in phase1.RECIPES:
        args = phase1.parse_args(["--recipe", recipe, "--batch-size", "32"])
        assert (args.recipe, args.batch_size, args.threads) == (recipe, 32, 1)
    for recipe in phase2.RECIPES:
        assert phase2.parse_args(["--recipe", recipe]).recipe == recipe
    with pytest.raises(SystemExit):
        phase1.parse_args(["--recipe", "unknown"])


def test_run_all_alternates_recipes_and_keeps_warm_after_cold(bench_modules):
    run_all = bench_modules["run_all"]
    args = run_all.parse_args(["--repeats", "2", "--phases", "2"])
    assert (args.repeats, args.phases) == (2, ["2"])
    recipes = run_all.PHASES["2"]["recipes"]
    first, second = run_all.rotation(recipes, 0), run_all.rotation(recipes, 1)
    assert sorted(first) == sorted(second) == sorted(recipes) and first != second
    for order in (first, second):
        assert order.index("framework-warm") == order.index("framework") + 1
    with pytest.raises(SystemExit):
        run_all.parse_args(["--phases", "3"])


def test_ratios_are_taken_within_a_repeat(bench_modules):
    run_all = bench_modules["run_all"]
    runs = {
        "framework": [{"pairs_per_s": 100.0, "e2e_s": 10.0}, {"pairs_per_s": 50.0, "e2e_s": 20.0}],
        "sentence-transformers": [{"pairs_per_s": 50.0, "e2e_s": 15.0}, {"pairs_per_s": 50.0, "e2e_s": 20.0}],
        "naive": [None, {"pairs_per_s": 10.0, "e2e_s": 60.0}],
    }
    for recipe_runs in runs.values():
        for run in recipe_runs:
            if run:
                run.update({k: 1.0 for k in ("setup_s", "train_s", "peak_rss_mib", "rss_at_start_mib",
                                              "student_pad_efficiency", "pairs_per_cpu_s", "e2e_cpu_s")},
                           command="x", machine={}, libraries={}, assets={}, pairs_trained=1, pairs_per_step=1)
    summary = run_all.summarize("1", runs)
    by_baseline = {c["baseline"]: c for c in summary["comparisons"]}
    assert by_baseline["sentence-transformers"]["pairs_per_s_ratio"] == {"median": 1.5, "min": 1.0, "max": 2.0, "n": 2}
    assert by_baseline["naive"]["pairs_per_s_ratio"]["n"] == 1  # the failed run drops only its own repeat
    assert "| `framework` vs `naive` | 5.00× | 1.00× | 3.00× |" in run_all.markdown([summary], None)
