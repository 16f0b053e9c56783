"""`make bench`: every CPU benchmark against its peers, side by side, in alternating repeats.

Each run is its own process in the benchmark venv (`.venv-bench`, created by bench/setup_env.sh when
missing), so every recipe gets a fresh interpreter, the same torch, and its own peak-memory figure. Within
a repeat the recipes run back to back, and the order rotates from repeat to repeat, so slow drift in
the machine's load (its cores are shared) spreads over all of them. Ratios are taken within a repeat
(framework ÷ baseline of the same repeat) and reported as median [min, max] over the repeats.

  phase 1  framework | sentence-transformers | naive                      bench/phase1_distill.py
  phase 2  framework (cold image cache) | framework (warm cache) | openclip bench/phase2_contrastive.py
  H100     FLOPs per pair and pairs/s at 50% MFU, from the real configs     bench/gpu_throughput.py --dry-run

Writes bench/results/: runs/*.json (one per run, with its command), logs/*.log, phase1.json, phase2.json,
gpu_dry_run.json, summary.md (the tables in BENCHMARKS.md) and commands.txt (every command, in order).

    .venv/bin/python bench/run_all.py                 # what `make bench` runs: 5 repeats, ~12 min here
    .venv/bin/python bench/run_all.py --repeats 5 --phases 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the working tree's altclip_train

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PHASES = {
    "1": {"script": "phase1_distill.py", "recipes": ["framework", "sentence-transformers", "naive"],
          "comparisons": [("framework", "sentence-transformers"), ("framework", "naive")]},
    "2": {"script": "phase2_contrastive.py", "recipes": ["framework", "framework-warm", "openclip"],
          "comparisons": [("framework", "openclip"), ("framework-warm", "openclip")]},
}
LABELS = {
    ("1", "framework"): "altclip-train distill (teacher cache, bucketing, per-batch padding)",
    ("1", "sentence-transformers"): "sentence-transformers make_multilingual (MSELoss, SentenceTransformerTrainer)",
    ("1", "naive"): "live teacher every step, captions padded to 77",
    ("2", "framework"): "altclip-train contrastive, image cache built in the run (cold)",
    ("2", "framework-warm"): "altclip-train contrastive, image cache from the previous run (warm)",
    ("2", "openclip"): "open_clip_train --lock-image (decode + frozen ViT every step)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per phase (default 5)")
    parser.add_argument("--phases", default="1,2", help="comma-separated subset of 1,2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (see BENCHMARKS.md)")
    parser.add_argument("--venv", default=str(REPO / ".venv-bench"), help="benchmark venv (created if missing)")
    parser.add_argument("--out", default=str(BENCH / "results"), help="results directory")
    parser.add_argument("--no-gpu-dry-run", action="store_true", help="skip the H100 FLOP figures")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown or args.repeats < 1:
        parser.error(f"--phases takes 1 and/or 2 (got {unknown}); --repeats must be >= 1")
    return args


def rotation(recipes: list[str], repeat: int) -> list[str]:
    """The order of one repeat: the recipe list rotated by the repeat number (a warm run stays right after
    its cold run, whose cache it reuses)."""
    units = [[r, f"{r}-warm"] if f"{r}-warm" in recipes else [r] for r in recipes if not r.endswith("-warm")]
    shift = repeat % len(units)
    return [recipe for unit in units[shift:] + units[:shift] for recipe in unit]


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / ".bench-ready").is_file():
        print(f"creating the benchmark venv {venv} (bench/setup_env.sh; a few minutes, once)", flush=True)
        subprocess.run(["bash", str(BENCH / "setup_env.sh")], check=True, cwd=REPO,
                       env={**os.environ, "BENCH_VENV": str(venv)})
    return python


def child_env(threads: int, datasets_cache: str) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
                # a fresh `datasets` cache per run, so no run reuses another's parsed corpus files
                "HF_DATASETS_CACHE": datasets_cache})
    return env


class Runner:
    def __init__(self, python: Path, out: Path, threads: int):
        self.python, self.out, self.threads = python, out, threads
        self.commands: list[str] = []
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, argv: list[str]) -> dict | None:
        """Run one benchmark process; returns its result JSON (None when it failed: see its log)."""
        result_path = self.out / "runs" / f"{name}.json"
        result_path.unlink(missing_ok=True)
        command = [str(self.python), *argv, "--json-out", str(result_path)]
        self.commands.append(shlex.join(command))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-hf-datasets-") as datasets_cache, \
                open(self.out / "logs" / f"{name}.log", "w") as log:
            status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env=child_env(self.threads, datasets_cache)).returncode
        seconds = time.perf_counter() - started
        if status != 0 or not result_path.is_file():
            print(f"  {name}: FAILED (exit {status}) after {seconds:.0f} s; see {self.out / 'logs' / (name + '.log')}",
                  flush=True)
            return None
        result = json.loads(result_path.read_text())
        print(f"  {name}: {result['pairs_per_s']:.1f} pairs/s, e2e {result['e2e_s']:.1f} s, "
              f"peak {result['peak_rss_mib']:.0f} MiB ({seconds:.0f} s with start-up)", flush=True)
        return result


def run_phase(runner: Runner, phase: str, repeats: int) -> dict[str, list[dict | None]]:
    spec = PHASES[phase]
    script = str(BENCH / spec["script"])
    results: dict[str, list[dict | None]] = {recipe: [] for recipe in spec["recipes"]}
    for repeat in range(repeats):
        print(f"phase {phase}, repeat {repeat + 1}/{repeats}", flush=True)
        cache_dir = Path(tempfile.mkdtemp(prefix="bench-image-cache-"))
        try:
            for recipe in rotation(spec["recipes"], repeat):
                argv = [script, "--recipe", recipe.removesuffix("-warm"), "--threads", str(runner.threads)]
                if phase == "2" and recipe.startswith("framework"):
                    argv += ["--cache-dir", str(cache_dir)]  # the cold run fills it, the warm run right after reads it
                results[recipe].append(runner.run(f"p{phase}-{recipe}-r{repeat + 1}", argv))
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return results


def build_assets(python: Path, threads: int, commands: list[str]) -> None:
    """bench_assets.py in the benchmark venv, which does not have altclip_train installed (the script puts
    the working tree on sys.path itself, as every bench entry point does)."""
    command = [str(python), str(BENCH / "bench_assets.py")]
    commands.append(shlex.join(command))
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env=child_env(threads, tempfile.gettempdir()))


# ----------------------------------------------------------------------------- aggregation
def spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(phase: str, results: dict[str, list[dict | None]]) -> dict:
    pad_key = "student_pad_efficiency" if phase == "1" else "text_pad_efficiency"
    summary = {}
    for recipe, runs in results.items():
        entry = {"label": LABELS[(phase, recipe)]}
        for key in ("pairs_per_s", "pairs_per_cpu_s", "e2e_s", "e2e_cpu_s", "setup_s", "train_s", "peak_rss_mib",
                    "rss_at_start_mib", pad_key):
            entry[key] = spread([run[key] if run else None for run in runs])
        entry["commands"] = [run["command"] for run in runs if run]
        summary[recipe] = entry
    comparisons = []
    for ours, theirs in PHASES[phase]["comparisons"]:
        pairs = list(zip(results[ours], results[theirs]))  # the same repeat: run back to back
        comparisons.append({
            "framework": ours, "baseline": theirs,
            "pairs_per_s_ratio": spread([a["pairs_per_s"] / b["pairs_per_s"] if a and b else None for a, b in pairs]),
            "pairs_per_cpu_s_ratio": spread([a["pairs_per_cpu_s"] / b["pairs_per_cpu_s"] if a and b else None
                                             for a, b in pairs]),
            "e2e_speedup": spread([b["e2e_s"] / a["e2e_s"] if a and b else None for a, b in pairs]),
            "e2e_cpu_speedup": spread([b["e2e_cpu_s"] / a["e2e_cpu_s"] if a and b else None for a, b in pairs]),
        })
    first = next((run for runs in results.values() for run in runs if run), None)
    return {"phase": int(phase), "recipes": summary, "comparisons": comparisons, "machine": first and first["machine"],
            "libraries": first and first["libraries"], "assets": first and first["assets"],
            "pairs_per_run": first and first["pairs_trained"], "batch_pairs": first and first["pairs_per_step"]}


def fmt(stat: dict | None, pattern: str = "{:.1f}", bracket: bool = True) -> str:
    if stat is None:
        return "failed"
    text = pattern.format(stat["median"])
    if bracket and stat["n"] > 1:
        text += f" [{pattern.format(stat['min'])}–{pattern.format(stat['max'])}]"
    return text


def markdown(summaries: list[dict], gpu: dict | None) -> str:
    lines = []
    for summary in summaries:
        phase = summary["phase"]
        pad_key = "student_pad_efficiency" if phase == 1 else "text_pad_efficiency"
        lines += [f"### Phase {phase}: {summary['pairs_per_run']} pairs, batch {summary['batch_pairs']}, 1 epoch, "
                  f"median [min–max] of {max(e['pairs_per_s']['n'] for e in summary['recipes'].values() if e['pairs_per_s'])} "
                  "repeats", "",
                  "| recipe | training pairs/s | pairs per CPU-s | end-to-end s | end-to-end CPU-s | of which setup s | "
                  "peak RSS MiB (after imports) | text pad efficiency |",
                  "|---|---|---|---|---|---|---|---|"]
        for recipe, entry in summary["recipes"].items():
            memory = f"{fmt(entry['peak_rss_mib'], '{:.0f}', False)} ({fmt(entry['rss_at_start_mib'], '{:.0f}', False)})"
            lines.append(f"| `{recipe}`: {entry['label']} | {fmt(entry['pairs_per_s'])} | {fmt(entry['pairs_per_cpu_s'])} | "
                         f"{fmt(entry['e2e_s'])} | {fmt(entry['e2e_cpu_s'])} | {fmt(entry['setup_s'], bracket=False)} | "
                         f"{memory} | {fmt(entry[pad_key], '{:.2f}', False)} |")
        lines += ["", "| ratio within a repeat | pairs/s: ours ÷ theirs | pairs per CPU-s: ours ÷ theirs | "
                  "end-to-end wall: theirs ÷ ours | end-to-end CPU: theirs ÷ ours |", "|---|---|---|---|---|"]
        for comparison in summary["comparisons"]:
            lines.append(f"| `{comparison['framework']}` vs `{comparison['baseline']}` | "
                         f"{fmt(comparison['pairs_per_s_ratio'], '{:.2f}')}× | "
                         f"{fmt(comparison['pairs_per_cpu_s_ratio'], '{:.2f}')}× | "
                         f"{fmt(comparison['e2e_speedup'], '{:.2f}')}× | {fmt(comparison['e2e_cpu_speedup'], '{:.2f}')}× |")
        lines.append("")
    if gpu:
        lines += ["### H100 physical limit (real ViT-L/14 + XLM-R large, synthetic captions of "
                  f"{gpu['mean_student_tokens']:.1f} student tokens on average, batch 256)", "",
                  "| case | GFLOP per pair | pairs/s at 50% MFU of 989 TFLOP/s |", "|---|---|---|"]
        lines += [f"| {row['case']} | {row['gflops_per_pair']:.1f} | {row['pairs_per_s_at_50pct_989']:.0f} |"
                  for row in gpu["cases"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(Path(args.venv))
    runner = Runner(python, out, args.threads)

    print("building (or reusing) the benchmark assets", flush=True)
    build_assets(python, args.threads, runner.commands)

    summaries = []
    for phase in args.phases:
        summary = summarize(phase, run_phase(runner, phase, args.repeats))
        (out / f"phase{phase}.json").write_text(json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)

    gpu = None
    if not args.no_gpu_dry_run:
        gpu_json = out / "gpu_dry_run.json"
        command = [str(python), str(BENCH / "gpu_throughput.py"), "--dry-run", "--json-out", str(gpu_json)]
        runner.commands.append(shlex.join(command))
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                       env=child_env(args.threads, tempfile.gettempdir()))
        gpu = json.loads(gpu_json.read_text())

    table = markdown(summaries, gpu)
    machine = next((s["machine"] for s in summaries if s["machine"]), None)
    header = f"Machine: {machine}\nTotal time of this `run_all.py`: {time.perf_counter() - started:.0f} s\n\n"
    (out / "summary.md").write_text(header + table)
    (out / "commands.txt").write_text("\n".join(runner.commands) + "\n")
    print("\n" + header + table)
    print(f"wrote {out / 'summary.md'}, {out / 'commands.txt'} and the per-run JSON under {out / 'runs'}")
    failed = [s for s in summaries for e in s["recipes"].values() if e["pairs_per_s"] is None or
              e["pairs_per_s"]["n"] < args.repeats]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
