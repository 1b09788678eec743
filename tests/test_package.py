"""The installed package: layout, public API, and that no top-level ``criteria`` is claimed."""

import subprocess
import sys

import snnprune


def test_criteria_is_only_importable_inside_snnprune(tmp_path):
    code = (
        "import importlib.util, snnprune.criteria as c\n"
        "assert importlib.util.find_spec('criteria') is None, 'top-level criteria importable'\n"
        "print(','.join(c.available()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == ["magnitude", "prob", "prob-empirical", "random"]
    failed = subprocess.run([sys.executable, "-c", "import criteria"], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode != 0 and "ModuleNotFoundError" in failed.stderr


def test_public_api_names():
    for name in ("collect_stats", "scores", "Pruner", "describe", "SpikeStats", "make_permanent"):
        assert hasattr(snnprune, name), name
