"""`clip_benchmark` as its console script runs it (`clip_benchmark.cli:main`), made to work under numpy >= 2.4.

CLIP_benchmark 1.6.2's zero-shot `accuracy` converts a 1-element array with `float(...)`, which numpy 2.4 refuses
("only 0-dimensional arrays can be converted to Python scalars"), so every zero-shot classification run fails
there. Under numpy >= 2.4 that one function is replaced by the same computation summed to a scalar first; nothing
else of CLIP_benchmark is touched, and under older numpy this is exactly the console script.

    python tests/interop/clip_benchmark_cli.py eval --dataset ... (any clip_benchmark arguments)
"""

from __future__ import annotations

import sys

import numpy
from clip_benchmark.cli import main
from clip_benchmark.metrics import zeroshot_classification


def accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's top-k accuracy (fractions), the count taken as a scalar."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum()) / n for k in topk]


if tuple(int(part) for part in numpy.__version__.split(".")[:2]) >= (2, 4):
    zeroshot_classification.accuracy = accuracy

if __name__ == "__main__":
    sys.exit(main())
