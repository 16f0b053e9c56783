"""Evaluation: zero-shot classification, image-text retrieval and the per-language report.

`run_eval(cfg)` backs `altclip-train eval`; `ZeroShotEvaluator` and `RetrievalEvaluator` evaluate an in-memory
model from the training loop.
"""

from altclip_train.evaluate.retrieval import RetrievalEvaluator
from altclip_train.evaluate.run import run_eval
from altclip_train.evaluate.zeroshot import ZeroShotEvaluator

__all__ = ["RetrievalEvaluator", "ZeroShotEvaluator", "run_eval"]
