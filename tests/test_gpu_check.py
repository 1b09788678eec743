"""experiments/gpu_check.py, the prepared GPU check, run as a CPU dry run so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_cpu_passes_every_check(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--repeats", "1",
                           "--json-out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    names = [c["check"] for c in result["checks"]]
    assert all(c["ok"] for c in result["checks"])
    for stage in ("estimators", "collect_stats", "scores", "masks", "training", "lottery", "cli"):
        assert any(n.startswith(stage) for n in names), stage
    assert {t["timing"].split(",")[0] for t in result["timings"]} >= {"plain forward", "collect_stats"}
    assert "checks passed" in done.stdout


def test_a_failing_stage_is_reported_and_exits_1(tmp_path, monkeypatch, capsys):
    gpu_check = _module()

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    def skip(*args, **kwargs):
        return None

    monkeypatch.setattr(gpu_check, "check_estimators", broken)
    for name in ("check_stats_scores_masks", "check_training", "check_lottery", "check_cli", "time_collect"):
        monkeypatch.setattr(gpu_check, name, skip)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--small", "--json-out", str(out)]) == 1
    checks = json.loads(out.read_text())["checks"]
    assert len(checks) == 1 and not checks[0]["ok"] and "device lost" in checks[0]["check"]
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_it_says_so(capsys):
    assert _module().main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
