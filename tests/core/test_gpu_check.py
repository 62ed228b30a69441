"""scripts/gpu_check.sh runs the whole path (random pipeline from config, loading, learning, inversion,
generation) and prints its figures; here at the tiny size on the CPU."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_at_the_tiny_size_and_prints_its_figures():
    env = os.environ | {"DIFFII_GPU_CHECK_SIZE": "tiny"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--steps", "1", "--images", "2", "--sampling-steps", "2"],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "size tiny: 64 px" in out
    assert "concept learning: 1 steps" in out and "losses finite: True" in out
    assert "inversion: 4 images x 2 steps" in out and "generation: 2 images x 2 steps" in out
    assert out.count("peak memory") == 3 and out.count("images/s") == 2
