#!/usr/bin/env bash
# Creates the benchmark venv (default .venv-bench): the peers we compare against, never project deps.
#
# It holds sentence-transformers (phase-1 baseline) and open-clip-torch (phase-2 baseline), plus the
# framework's own dependencies so the framework runs in the same interpreter (imported by path from
# the working tree). open_clip needs torchvision, and the only torchvision that imports here is
# 0.29.1 beside torch 2.14.1; every other package shared with the project venv is pinned to the
# project venv's version, so both sides of a comparison run the same transformers, tokenizers, numpy.
#
#   bash bench/setup_env.sh                 # creates .venv-bench (a few minutes: the torch wheel is large)
#   BENCH_VENV=/tmp/vb bash bench/setup_env.sh
#   BENCH_VENV=.venv-interop EXTRA_PIP="clip-benchmark==1.6.2" bash bench/setup_env.sh   # make test-interop's venv
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_VENV=${BENCH_VENV:-.venv-bench}
PROJECT_PY=${PROJECT_PY:-.venv/bin/python}
BENCH_TORCH=${BENCH_TORCH:-2.14.1}
BENCH_TORCHVISION=${BENCH_TORCHVISION:-0.29.1}
EXTRA_PIP=${EXTRA_PIP:-}

if [[ ! -x "$PROJECT_PY" ]]; then
  echo "setup_env.sh: $PROJECT_PY not found; run 'make install' first" >&2
  exit 2
fi

python3 -m venv "$BENCH_VENV"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# The project venv's versions, minus the torch family (replaced below) and the project itself.
"$PROJECT_PY" -m pip freeze --exclude-editable \
  | grep -v -i -E '^(torch|torchvision|nvidia-|triton|altclip-train)([=@ ]|$)' \
  | grep -v -E '^-e ' > "$constraints"

"$BENCH_VENV/bin/python" -m pip install -q --upgrade pip
"$BENCH_VENV/bin/python" -m pip install -q "torch==$BENCH_TORCH" "torchvision==$BENCH_TORCHVISION"
# The framework's runtime dependencies (read from pyproject.toml), at the project venv's versions.
mapfile -t project_deps < <("$PROJECT_PY" - <<'EOF'
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if not dep.startswith("torch"):
        print(dep)
EOF
)
"$BENCH_VENV/bin/python" -m pip install -q -c "$constraints" "${project_deps[@]}" \
  sentence-transformers==6.2.0 open-clip-torch==3.3.0 psutil pyinstrument py-spy $EXTRA_PIP
"$BENCH_VENV/bin/python" - <<'EOF'
import open_clip, sentence_transformers, torch, torchvision, transformers
print(f"bench venv ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__}, "
      f"open_clip {open_clip.__version__}")
EOF
touch "$BENCH_VENV/.bench-ready"
