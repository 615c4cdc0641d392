"""The GPU check (bench/gpu_check.py) at --tiny on CPU: every row runs its real code path and gives a figure.

No GPU has been lent to this work, so the first GPU run of the script will be its first run there: this test
keeps every row working until then (a row that raises is recorded as an error, not a crash, so it is checked
here row by row).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from launching import ROOT, run

pytestmark = pytest.mark.launch

# The rows: (a) text, (b) 8B LoRA ZeRO-3, (c) fusion, (d) MTCNN, (e) extractor steps, (f) loader cores
ROWS = ["text", "llm", "fusion", "faces", "audio", "visual", "loader_audio", "loader_visual"]


def test_tiny_gives_every_row_a_finite_positive_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    log = tmp_path / "gpu_check.log"
    run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--json", str(out), "--work",
         str(tmp_path / "work")], log)
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["wall_s"] > 0
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ROWS
    for key, r in rows.items():
        assert "error" not in r and "skipped" not in r, (key, r)
        assert r["name"] and r["shapes"] and r["metric"], (key, r)
        for field in ("value", "memory_mb"):
            assert math.isfinite(r[field]) and r[field] > 0, (key, field, r)
    assert rows["text"]["tokens_per_s"] > 0 and rows["text"]["tflops_per_device"] > 0
    assert rows["llm"]["metric"] == "tokens/s" and "LoRA r16" in rows["llm"]["shapes"]
    assert rows["loader_visual"]["cpu_ms_per_utt"] > 0
    assert rows["loader_visual"]["step_samples_per_s"] == rows["visual"]["value"]
    table = log.read_text()
    assert all(f"| {r['name']} |" in table for r in rows.values())  # the one table, every row in it
