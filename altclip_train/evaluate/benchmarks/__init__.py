"""The standard multilingual benchmarks, read from the layouts they are released in (no conversion step).

    altclip-train eval models.phase2=outputs/contrastive/final benchmarks=[xtd10,xm3600] data_root=/data/benchmarks

| name            | task           | reader module        | languages                          |
|-----------------|----------------|----------------------|------------------------------------|
| xtd10           | retrieval      | `xtd10`              | 11 (COCO images)                   |
| xm3600          | retrieval      | `crossmodal3600`     | 36                                 |
| flickr30k_200   | retrieval      | `flores200`          | FLORES-200 codes                   |
| xtd200          | retrieval      | `flores200`          | FLORES-200 codes                   |
| babel_imagenet  | classification | `babel_imagenet`     | ~100 (ImageNet class subsets)      |
| imagenet1k      | classification | `imagenet1k`         | CLIP_benchmark's class-name JSONs  |

Each module's docstring gives its layout under `data_root`; `benchmark_options.<name>` passes a reader its
options (`root`, `images`, `languages`, ...); `codes` lists the language codes each one reads (CLIP_benchmark's)
and how they map to the ISO 639-1 codes of the report. Readers only read files; `evaluate.BenchmarkEvaluator` scores a
model and `results.write_clip_benchmark_results` writes CLIP_benchmark's results JSON.
"""

from __future__ import annotations

from collections.abc import Callable

from altclip_train.evaluate.benchmarks.babel_imagenet import read_babel_imagenet
from altclip_train.evaluate.benchmarks.base import ClassificationBenchmark, RetrievalBenchmark
from altclip_train.evaluate.benchmarks.crossmodal3600 import read_crossmodal3600
from altclip_train.evaluate.benchmarks.evaluate import BenchmarkEvaluator
from altclip_train.evaluate.benchmarks.flores200 import read_flickr30k_200, read_xtd200
from altclip_train.evaluate.benchmarks.imagenet1k import read_imagenet1k
from altclip_train.evaluate.benchmarks.results import write_clip_benchmark_results
from altclip_train.evaluate.benchmarks.xtd10 import read_xtd10

READERS: dict[str, Callable[..., RetrievalBenchmark | ClassificationBenchmark]] = {
    "xtd10": read_xtd10,
    "xm3600": read_crossmodal3600,
    "flickr30k_200": read_flickr30k_200,
    "xtd200": read_xtd200,
    "babel_imagenet": read_babel_imagenet,
    "imagenet1k": read_imagenet1k,
}
# Other spellings users will type (CLIP_benchmark's own dataset names among them).
ALIASES = {"crossmodal3600": "xm3600", "flickr30k-200": "flickr30k_200", "babel-imagenet": "babel_imagenet"}


def open_benchmark(name: str, data_root=None, **options) -> RetrievalBenchmark | ClassificationBenchmark:
    """Read one benchmark by name; unknown names and unknown options get one clear line."""
    key = ALIASES.get(name, name)
    if key not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(READERS)}")
    try:
        return READERS[key](data_root, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise ValueError(f"benchmark {key}: {error}".replace(f"{READERS[key].__name__}() ", "")) from error
        raise


__all__ = [
    "READERS",
    "BenchmarkEvaluator",
    "ClassificationBenchmark",
    "RetrievalBenchmark",
    "open_benchmark",
    "write_clip_benchmark_results",
]
