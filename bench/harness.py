"""Measuring one benchmark run the same way whatever trains: step clock, wall time, peak memory.

Every recipe (the framework, sentence-transformers' trainer, open_clip's loop) steps a
`torch.optim.Optimizer`, so a global optimizer post-step hook timestamps every step without touching
any of their code. From those timestamps and the run's start:

  setup_s      start -> end of the first step: model loading, tokenisation, cache building, first step
  e2e_s        start -> the trained model is written: everything a user waits for after imports
  pairs_per_s  steady-state training throughput: pairs in steps (warmup+1 .. last) / their wall time
               (the first `warmup` steps pay one-off allocation and are left out)
  peak_rss_mib the largest resident set of the process tree (main process + data-loader workers),
               sampled every 50 ms, and at least the main process's own getrusage peak;
               rss_at_start_mib is the process after its imports (the libraries' share of the peak)
  pairs_per_cpu_s / e2e_cpu_s  the same two figures in CPU seconds of the process tree (main process
               plus live data-loader workers) instead of wall seconds. On a machine whose cores other
               jobs share, wall time also counts waiting for a core; CPU time counts only the work,
               so ratios of these stay put when the load around them changes.

Imports happen before `start()`: they cost the same for every recipe and say nothing about training.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import threading
import time
from pathlib import Path


class RunMeter:
    """Clocks one run: `start()` after the imports, `finish()` once the model is written, then `summary()`."""

    def __init__(self, warmup_steps: int = 3, sample_every_s: float = 0.05):
        import torch.optim.optimizer as optimizer_module

        self.warmup_steps = warmup_steps
        self.sample_every_s = sample_every_s
        self.step_times: list[float] = []
        self.step_cpu: list[float] = []
        self.marks: dict[str, float] = {}
        self.start_time = self.end_time = None
        self._peak_tree = 0
        self._peak_pss = 0
        self._peak_anon = 0
        self._stop = threading.Event()
        self._sampler = None
        self._hook = optimizer_module.register_optimizer_step_post_hook(self._on_step)

    def _on_step(self, optimizer, args, kwargs) -> None:
        self.step_times.append(time.perf_counter())
        self.step_cpu.append(tree_cpu_seconds())

    def _sample_tree(self) -> None:
        import psutil

        me = psutil.Process()
        children, samples = [], 0
        while not self._stop.is_set():
            try:
                if samples % 10 == 0:  # listing children scans /proc: cheap now and then, not every sample
                    children = me.children(recursive=True)
                samples += 1
                total = me.memory_info().rss
                for child in children:
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self._peak_tree = max(self._peak_tree, total)
                self._peak_anon = max(self._peak_anon, _tree_anon(me, children))
                if samples % 10 == 1:  # PSS reads smaps: every 10th sample only
                    self._peak_pss = max(self._peak_pss, _tree_pss(me, children))
            except psutil.Error:
                pass
            self._stop.wait(self.sample_every_s)

    @property
    def peak_tree_rss(self) -> int:
        return self._peak_tree

    @property
    def peak_tree_pss(self) -> int:
        return self._peak_pss

    @property
    def peak_tree_anon(self) -> int:
        return self._peak_anon

    def start(self) -> None:
        import psutil

        self.rss_at_start = psutil.Process().memory_info().rss
        self.start_cpu = tree_cpu_seconds()
        self.start_time = time.perf_counter()
        self._sampler = threading.Thread(target=self._sample_tree, daemon=True)
        self._sampler.start()

    def mark(self, name: str) -> None:
        """Time since start of a named moment (e.g. "cache_built"), reported as `<name>_s`."""
        self.marks[name] = time.perf_counter() - self.start_time

    def finish(self) -> None:
        self.end_time = time.perf_counter()
        self.end_cpu = tree_cpu_seconds()
        self._stop.set()
        self._sampler.join()
        self._hook.remove()

    def summary(self, pairs_per_step: int) -> dict:
        steps = len(self.step_times)
        if steps <= self.warmup_steps + 1:
            raise RuntimeError(f"only {steps} optimizer steps were taken; need more than {self.warmup_steps + 1}")
        first, last = self.step_times[self.warmup_steps], self.step_times[-1]
        timed_steps = steps - 1 - self.warmup_steps
        own_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        step_gaps = [b - a for a, b in zip(self.step_times[self.warmup_steps:], self.step_times[self.warmup_steps + 1:])]
        return {
            "steps": steps,
            "pairs_per_step": pairs_per_step,
            "pairs_trained": steps * pairs_per_step,
            "pairs_per_s": timed_steps * pairs_per_step / (last - first),
            "pairs_per_cpu_s": timed_steps * pairs_per_step / (self.step_cpu[-1] - self.step_cpu[self.warmup_steps]),
            "median_step_s": sorted(step_gaps)[len(step_gaps) // 2],
            "setup_s": self.step_times[0] - self.start_time,
            "train_s": self.step_times[-1] - self.step_times[0],
            "e2e_s": self.end_time - self.start_time,
            "e2e_cpu_s": self.end_cpu - self.start_cpu,
            "peak_rss_mib": max(self._peak_tree, own_peak_kib * 1024) / 2**20,
            "rss_at_start_mib": self.rss_at_start / 2**20,
            **{f"{name}_s": value for name, value in self.marks.items()},
        }


def _tree_anon(me, children) -> int:
    """Anonymous resident memory of the process tree (RssAnon): what the processes hold themselves. RSS also
    counts the pages of memory-mapped files they touched, which are the kernel's page cache (shared by every
    rank on a node, and dropped under pressure), so RSS grows as an epoch reads through a memory map."""
    total = 0
    for process in (me, *children):
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def _tree_pss(me, children) -> int:
    """Proportional set size of the process tree: a page shared by k processes counts 1/k in each, so forked
    workers (which share their parent's libraries and memory maps) are not counted k times as RSS is."""
    import psutil

    total = 0
    for process in (me, *children):
        try:
            total += process.memory_full_info().pss
        except (psutil.Error, AttributeError):
            pass
    return total


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process, its finished children and its live ones (data-loader workers)."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def machine() -> dict:
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def library_versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def this_command(argv: list[str] | None) -> str:
    return shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])])


def write_json(path: str | Path | None, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print("RESULT " + json.dumps(payload, default=str), flush=True)


def quiet_libraries() -> None:
    """Fewer progress bars and warnings on stdout: a bench run prints one result line."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
