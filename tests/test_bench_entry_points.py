"""Every bench entry point runs in an interpreter that does not have altclip_train installed, the way
`make bench` runs them in `.venv-bench` (bench/setup_env.sh installs the project's dependencies only).

The stand-in for that venv is a bare venv whose one `.pth` line puts the project venv's site-packages on
sys.path: every dependency imports, but the editable install's import hook (itself a `.pth` file there,
which a plain path line does not execute) is missing, so `import altclip_train` fails unless the script
puts the working tree on sys.path itself.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


@pytest.fixture(scope="module")
def bench_like_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("bench-like-venv")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_stand_in_venv_lacks_the_package(bench_like_python, tmp_path):
    probe = "import numpy, torch, transformers\ntry:\n import altclip_train\nexcept ImportError:\n print('missing')"
    out = subprocess.run([str(bench_like_python), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "missing"


@pytest.mark.slow
def test_bench_assets_builds_the_way_run_all_runs_it(bench_like_python, tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        run_all = importlib.import_module("run_all")
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setenv("ALTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    commands: list[str] = []
    run_all.build_assets(bench_like_python, 1, commands)  # raises CalledProcessError if the script fails
    manifest = json.loads(next((tmp_path / "cache").glob("bench-*/manifest.json")).read_text())
    assert manifest["phase1_pairs"] > 0 and manifest["phase2_images"] > 0
    assert commands == [f"{bench_like_python} {BENCH / 'bench_assets.py'}"]


@pytest.mark.parametrize("script", ["gpu_throughput.py", "run_all.py", "phase1_distill.py", "phase2_contrastive.py"])
def test_every_entry_point_imports_the_package_in_that_venv(bench_like_python, script):
    # --help parses arguments after the module-level imports, altclip_train's included.
    done = subprocess.run([str(bench_like_python), str(BENCH / script), "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
