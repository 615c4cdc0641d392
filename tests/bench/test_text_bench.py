"""bench/text_bench.py's records: the --json file holds every cell, the CPU and the ratio, without a launch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def text_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # as when run as a script: its sibling meld_text is importable
    spec = importlib.util.spec_from_file_location("text_bench", BENCH / "text_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_json_file_holds_every_cell_the_cpu_and_the_ratio(text_bench, tmp_path):
    ours = text_bench.cell("minilm", "all-MiniLM-L6-v2 (m2fdist)", "full", "ZeRO-2",
                           {"samples_per_s": 16.5, "tokens_per_s": 600.0, "peak_mb": [1300, 1290]})
    hf = text_bench.cell("trainer", "all-MiniLM-L6-v2 (HF Trainer)", "full", "ZeRO-2",
                         {"samples_per_s": 15.0, "tokens_per_s": 550.0, "peak_mb": [1400, 1380]})
    failed = text_bench.cell("decoder-full-ZeRO-3", "decoder 7B (random)", "full", "ZeRO-3",
                             {"error": "out of memory"})
    path = tmp_path / "out" / "bench.json"
    text_bench.write_json(path, [ours, hf, failed], ["--cells", "minilm,trainer", "--steps", "10"], 10)
    doc = json.loads(path.read_text())
    assert doc["cpu"] and doc["steps"] == 10 and doc["ranks"] == 2
    assert doc["command"] == "bench/text_bench.py --cells minilm,trainer --steps 10"
    assert doc["minilm_over_trainer"] == pytest.approx(1.1)
    assert [c["name"] for c in doc["cells"]] == ["minilm", "trainer", "decoder-full-ZeRO-3"]
    assert doc["cells"][0] == {"name": "minilm", "model": "all-MiniLM-L6-v2 (m2fdist)", "mode": "full",
                               "zero": "ZeRO-2", "samples_per_s": 16.5, "tokens_per_s": 600.0,
                               "peak_rss_mb_per_rank": [1300, 1290]}
    assert doc["cells"][2]["error"] == "out of memory" and "samples_per_s" not in doc["cells"][2]


def test_table_rows_and_no_ratio_without_both_minilm_cells(text_bench):
    ours = text_bench.cell("minilm", "all-MiniLM-L6-v2 (m2fdist)", "full", "ZeRO-2",
                           {"samples_per_s": 16.5, "tokens_per_s": 600.0, "peak_mb": [1300, 1290]})
    assert text_bench.row(ours) == "| all-MiniLM-L6-v2 (m2fdist) | full | ZeRO-2 | 16.50 | 600 | 1.3 / 1.3 GB |"
    assert text_bench.ratio([ours]) is None
    failed = text_bench.cell("trainer", "all-MiniLM-L6-v2 (HF Trainer)", "full", "ZeRO-2", {"error": "boom"})
    assert "failed: 'boom'" in text_bench.row(failed) and text_bench.ratio([ours, failed]) is None
