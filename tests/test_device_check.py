"""benchmarks/device_check.py, the script a lent GPU runs, run here on the CPU at a tiny size: every
check it makes passes, and it writes its table."""
from __future__ import annotations

import subprocess
import sys

from conftest import FIXTURES, REPO


def test_the_device_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "check.md"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--device", "cpu",
                             "--sizes", "64x96", "--quick", "--fixtures", str(FIXTURES), "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.read_text()
    for row in ("| cpu: image vs the published code | ok |", "| cpu: video 2 vs the published code | ok |",
                "| cpu: cascade vs the published code | ok |", "| guided refiner | ok |",
                "| float16 network vs float32 | skipped | needs CUDA |", "| engine round trips | ok |"):
        assert row in table, row
    for measurement in ("one frame, host to host", "static shot", "temporal pair", "engine round trip, inline",
                        "engine round trip, shm", "engine round trip, file",
                        "fine-tune step (2 crops of 64 px, forward and backward)"):
        assert f"| 64x96 | {measurement}" in table, measurement
