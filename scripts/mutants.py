"""Mutation testing for the code where a wrong implementation still trains and only the numbers are off:
the losses, the learning-rate schedule, gradient accumulation and clipping, weight decay, the teacher's
distillation target, image preprocessing, phase-1 validation and a few documented options.

Each mutant is one hand-written text substitution that stands for a plausible bug. The script copies the
repository into a temporary directory (HEAD by default, so nobody's working files are ever touched), applies
one mutant at a time to the copy, runs the few fast tests meant to catch it, and restores the file. A mutant
is *killed* when those tests fail and *survives* when they pass; the score is killed / (killed + survived).
A substitution whose text is no longer in the file (the code moved) is reported as "did not apply" and
left out of the score, so the list keeps working while the code is rewritten.

    .venv/bin/python scripts/mutants.py                     # every mutant, on a copy of HEAD (make mutants)
    .venv/bin/python scripts/mutants.py --list              # names, files and tests, nothing run
    .venv/bin/python scripts/mutants.py --only lr- clip-    # the mutants whose names start so
    .venv/bin/python scripts/mutants.py --worktree          # copy the working tree (tracked + untracked) instead
    .venv/bin/python scripts/mutants.py --with tests/test_optimization.py   # HEAD plus these working-tree files

Before any mutant runs, the selected tests run once on the unmutated copy and must pass: a test that
already fails would "kill" every mutant. Exit status: 0 after a run, 2 when that baseline fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str                            # file in the repository
    edits: tuple[tuple[str, str], ...]   # (text, replacement) alternatives; the first found exactly once applies
    tests: tuple[str, ...]               # pytest node ids that should catch it
    bug: str                             # the wrong implementation it stands for


T_LOSSES = ("tests/test_losses.py",)
T_SCHEDULE = ("tests/test_optimization.py::test_cosine_schedule_by_hand",
              "tests/test_optimization.py::test_linear_schedule_by_hand",
              "tests/test_optimization.py::test_constant_schedule_still_warms_up_and_a_zero_floor_reaches_zero",
              "tests/test_optimization.py::test_logged_learning_rate_follows_the_schedule")
T_STEP = ("tests/test_optimization.py::test_clipping_scales_a_large_gradient_to_the_clip_norm_and_leaves_a_small_one",
          "tests/test_optimization.py::test_accumulated_gradient_is_the_mean_and_is_clipped_once")
T_ACCUMULATION = (*T_STEP, "tests/test_optimization.py::test_accumulating_two_micro_batches_trains_like_one_batch")
T_DECAY = ("tests/test_optimization.py::test_weight_decay_goes_to_matrices_not_to_biases_and_norms",
           "tests/test_optimization.py::test_a_scalar_parameter_like_logit_scale_gets_no_weight_decay")
T_TARGET = ("tests/test_phase1_validation.py::test_teacher_targets_are_clips_pooled_end_of_text_state_before_projection",
            "tests/test_distill.py::test_live_teacher_gives_the_same_first_loss_as_the_cache",
            "tests/test_parallel_data.py::test_batches_equal_a_direct_computation")
T_IMAGES = ("tests/test_documented_features.py::test_cached_image_vectors_are_what_plain_transformers_computes",)
T_ACCURACY = ("tests/test_phase1_validation.py::test_translation_accuracy_hand_example_with_repeated_sources",
              "tests/test_phase1_validation.py::test_translation_accuracy_candidates_are_all_sources_whatever_the_row_order")
T_SPLIT = ("tests/test_phase1_validation.py::test_validation_pairs_are_never_training_pairs",)
T_TWO_RANK_VAL = ("tests/test_phase1_validation.py::test_two_process_validation_equals_one_process",)
T_WEIGHT = ("tests/test_documented_features.py::test_corpus_weight_sets_the_rows_an_epoch_draws",)
T_HUB = ("tests/test_documented_features.py::test_hub_corpus_reads_dotted_struct_columns",
         "tests/test_documented_features.py::test_hub_corpus_through_the_data_module")
T_VERIFY = ("tests/test_documented_features.py::test_cache_images_verify_rehashes_and_rebuilds_a_flip_a_stat_check_misses",)
T_LICENSE = ("tests/test_documented_features.py::test_export_license_reaches_the_model_card_front_matter",)
T_PAIRS_PER_S = ("tests/test_task_outputs.py::test_the_loop_logs_pairs_per_second",)
T_UNK = ("tests/test_tiny.py::test_unk_rate_counts_unknown_tokens_only",)

LOSSES, TRAIN = "altclip_train/losses.py", "altclip_train/train.py"
PARALLEL, DISTILL = "altclip_train/data/parallel.py", "altclip_train/tasks/distill.py"
CLIP_TEACHER = "altclip_train/models/teachers/clip.py"
IMAGES = "altclip_train/data/images.py"
LOOP_LR = ("            state.batch_in_epoch += 1\n            for group in optimizer.param_groups:\n"
           "                group[\"lr\"] = cfg.optim.lr * lr_factor(state.step, total_steps, cfg.optim)")

MUTANTS: tuple[Mutant, ...] = (
    # ---- losses
    Mutant("loss-mse-as-l1", LOSSES, (("return F.mse_loss(student.to(dtype), teacher.to(dtype))",
                                       "return F.l1_loss(student.to(dtype), teacher.to(dtype))"),),
           T_LOSSES, "phase-1 loss is L1, not MSE"),
    Mutant("loss-mse-in-bf16", LOSSES, (("dtype = torch.promote_types(_compute_dtype(student), _compute_dtype(teacher))",
                                         "dtype = student.dtype"),),
           T_LOSSES, "phase-1 loss computed in the towers' half precision"),
    Mutant("loss-clip-one-direction", LOSSES, (("return (image_to_text + text_to_image) / 2", "return image_to_text"),),
           T_LOSSES, "InfoNCE over image->text only"),
    Mutant("loss-clip-no-clamp", LOSSES, ((".clamp(max=max_logit_scale).exp()", ".exp()"),),
           T_LOSSES, "logit scale not clamped at ln 100"),
    Mutant("loss-clip-scale-not-exponentiated", LOSSES, ((".clamp(max=max_logit_scale).exp()",
                                                          ".clamp(max=max_logit_scale)"),),
           T_LOSSES, "the log temperature used as the temperature"),
    Mutant("loss-clip-unnormalised", LOSSES, (("    images = F.normalize(image_embeds.to(dtype), dim=-1)\n"
                                               "    texts = F.normalize(text_embeds.to(dtype), dim=-1)\n"
                                               "    scale = _as_scalar(logit_scale, \"logit_scale\", images).clamp",
                                               "    images = image_embeds.to(dtype)\n"
                                               "    texts = text_embeds.to(dtype)\n"
                                               "    scale = _as_scalar(logit_scale, \"logit_scale\", images).clamp"),),
           T_LOSSES, "dot products instead of cosine similarities"),
    Mutant("loss-clip-labels-ignore-rank", LOSSES, (("labels = torch.arange(local_batch, device=images.device) + rank * local_batch",
                                                     "labels = torch.arange(local_batch, device=images.device)"),),
           T_LOSSES, "every rank takes the first local batch of the gathered one as its positives"),
    Mutant("loss-sigmoid-positives-ignore-rank", LOSSES, (("signs[rows, rows + rank * local_batch] = 1.0",
                                                           "signs[rows, rows] = 1.0"),),
           T_LOSSES, "SigLIP positives misplaced on every rank but the first"),
    Mutant("loss-sigmoid-mean-over-pairs", LOSSES, (("return -F.logsigmoid(signs * logits).sum() / local_batch",
                                                     "return -F.logsigmoid(signs * logits).mean()"),),
           T_LOSSES, "SigLIP normalised by pairs, not by batch"),
    Mutant("loss-gather-backward-not-summed", LOSSES, (("        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)\n",
                                                        "        grad = grad * 1\n"),),
           T_LOSSES, "all-gather's backward keeps only this rank's own gradient"),
    # ---- learning-rate schedule
    Mutant("lr-warmup-from-zero", TRAIN, (("return (step + 1) / optim.warmup_steps", "return step / optim.warmup_steps"),),
           T_SCHEDULE, "warmup starts at lr 0 (the first update is wasted)"),
    Mutant("lr-warmup-one-step-long", TRAIN, (("if optim.warmup_steps and step < optim.warmup_steps:",
                                               "if optim.warmup_steps and step <= optim.warmup_steps:"),),
           T_SCHEDULE, "warmup overshoots the peak by one step"),
    Mutant("lr-decay-ignores-warmup", TRAIN, (("progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))",
                                               "progress = min(1.0, step / max(1, total_steps))"),),
           T_SCHEDULE, "cosine measured from step 0, so it never starts at the peak"),
    Mutant("lr-cosine-full-period", TRAIN, (("0.5 * (1 + math.cos(math.pi * progress))",
                                             "0.5 * (1 + math.cos(2 * math.pi * progress))"),),
           T_SCHEDULE, "a full cosine period: the rate climbs back up at the end"),
    Mutant("lr-floor-ignored", TRAIN, (("return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape", "return shape"),),
           T_SCHEDULE, "min_lr_ratio ignored"),
    Mutant("lr-floor-on-top", TRAIN, (("return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape",
                                       "return optim.min_lr_ratio + shape"),),
           T_SCHEDULE, "min_lr_ratio added on top (peak above lr)"),
    Mutant("lr-loop-lags-a-step", TRAIN, ((LOOP_LR, LOOP_LR.replace("lr_factor(state.step,", "lr_factor(state.step - 1,")),),
           T_SCHEDULE, "the loop sets the rate of the step it just took"),
    Mutant("lr-loop-never-updates", TRAIN, ((LOOP_LR, LOOP_LR.rsplit("\n", 1)[0] + "\n                pass"),),
           T_SCHEDULE, "the schedule is computed once and never applied"),
    # ---- gradient accumulation
    Mutant("accum-step-every-micro-batch", TRAIN, (("if not accelerator.sync_gradients:\n                continue",
                                                    "if False:\n                continue"),),
           T_ACCUMULATION, "the loop counts micro-batches as optimizer steps"),
    Mutant("accum-same-piece-twice", PARALLEL, (("share = rank_slice(rows, self.rank * self.grad_accum + step, pieces)",
                                                 "share = rank_slice(rows, self.rank * self.grad_accum, pieces)"),),
           T_ACCUMULATION, "every micro-batch of a step is the same slice of the global batch"),
    Mutant("accum-loss-not-scaled", TRAIN, (("accelerator.backward(outputs[\"loss\"])", "outputs[\"loss\"].backward()"),),
           T_ACCUMULATION, "micro-batch gradients summed, not averaged"),
    # ---- clipping
    Mutant("clip-every-micro-batch", TRAIN, (("if accelerator.sync_gradients and grad_clip:", "if grad_clip:"),),
           T_STEP, "each micro-batch clipped on its own"),
    Mutant("clip-by-value", TRAIN, (("accelerator.clip_grad_norm_(core.parameters(), grad_clip)",
                                     "accelerator.clip_grad_value_(core.parameters(), grad_clip)"),),
           T_STEP, "clip by value instead of by global norm"),
    Mutant("clip-never", TRAIN, (("        if accelerator.sync_gradients and grad_clip:\n"
                                  "            accelerator.clip_grad_norm_(core.parameters(), grad_clip)\n",
                                  ""),),
           T_STEP, "optim.grad_clip ignored"),
    # ---- weight decay
    Mutant("decay-on-biases-and-norms", TRAIN, (("(no_decay if param.ndim < 2 else decay).append(param)",
                                                 "(no_decay if param.ndim < 1 else decay).append(param)"),),
           T_DECAY, "biases and LayerNorm weights decayed"),
    Mutant("decay-in-the-no-decay-group", TRAIN, (("{\"params\": no_decay, \"weight_decay\": 0.0}",
                                                   "{\"params\": no_decay, \"weight_decay\": optim.weight_decay}"),),
           T_DECAY, "the no-decay group gets the decay too"),
    # ---- the teacher's target (models/teachers/ now, models/teacher.py before)
    Mutant("target-after-projection", CLIP_TEACHER,
           (("return self.model.text_projection(pooled) if self.projected else pooled",
             "return pooled if self.projected else self.model.text_projection(pooled)"),),
           T_TARGET, "the default target taken after text_projection"),
    Mutant("target-first-token", CLIP_TEACHER,
           (("pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output",
             "pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]"),),
           T_TARGET, "the target pooled at <|startoftext|> instead of end-of-text"),
    Mutant("target-by-pair-row", PARALLEL, (("embeds = torch.from_numpy(np.asarray(self.teacher[sources], dtype=np.float16))",
                                             "embeds = torch.from_numpy(np.asarray(self.teacher[rows], dtype=np.float16))"),),
           T_TARGET, "cached targets looked up by pair row instead of English source row"),
    Mutant("target-live-interleaved", DISTILL, (("return pooled.repeat(repeats, 1)",
                                                 "return pooled.repeat_interleave(repeats, dim=0)"),),
           T_TARGET, "live teacher targets paired with the wrong student rows"),
    # ---- image preprocessing (the library's processor now; ClipImageTransform before)
    Mutant("images-mirrored", IMAGES,
           (("return self.processor(images=image, return_tensors=\"pt\")[\"pixel_values\"][0]",
             "return self.processor(images=image, return_tensors=\"pt\")[\"pixel_values\"][0].flip(-1)"),
            ("left = (image.width - self.crop) // 2", "left = 0")),
           T_IMAGES, "training pixels differ from the exported processor's (mirrored / crop off centre)"),
    Mutant("images-greyscale", IMAGES,
           (("        return self.apply(image)\n", "        return self.apply(image.convert(\"L\").convert(\"RGB\"))\n"),
            ("pixels = np.asarray(image, dtype=np.float32) / 255.0", "pixels = np.asarray(image, dtype=np.float32) / 256.0")),
           T_IMAGES, "colour lost (or rescaled by 1/256) before the processor"),
    # ---- phase-1 validation
    Mutant("val-padding-rows-kept", DISTILL, (("keep = torch.cat(sources) >= 0", "keep = torch.cat(sources) >= -1"),),
           T_TWO_RANK_VAL, "the repeated rows that even out ranks' shares are scored"),
    Mutant("val-rows-also-trained", PARALLEL, (("held_sources[np.asarray(self.store.pair_source[val_rows[-1]])] = True",
                                                "held_sources[np.asarray(self.store.pair_source[val_rows[-1]])] = False"),),
           T_SPLIT, "held-out pairs stay in the training plan"),
    Mutant("val-sentence-trained-elsewhere", PARALLEL,
           (("train_groups = [np.sort(rows_whose_source_is_not(rows, self.store.pair_source, held_sources))",
             "train_groups = [np.sort(np.setdiff1d(rows, np.concatenate(val_rows)))"),),
           T_SPLIT + ("tests/test_phase1_validation.py::test_validation_english_sentences_are_never_trained_on",),
           "a held-out pair's English sentence still trains through another corpus"),
    Mutant("accuracy-dot-product", DISTILL, (("distances = torch.cdist(student, teacher[first])",
                                              "distances = -(student @ teacher[first].T)"),),
           T_ACCURACY, "translation accuracy by dot product instead of distance"),
    Mutant("accuracy-misaligned-candidates", DISTILL, (("distances = torch.cdist(student, teacher[first])",
                                                        "distances = torch.cdist(student, teacher[: len(unique_sources)])"),),
           T_ACCURACY, "candidate vectors not aligned with the source ids they are labelled with"),
    # ---- phase-1 data and documented options
    Mutant("weight-ignored", PARALLEL, (("[self.specs[self.store.groups[i][\"corpus\"]].weight for i in chosen]",
                                         "[1.0 for i in chosen]"),),
           T_WEIGHT, "per-corpus weight: never reaches the plan"),
    Mutant("weight-rounded", "altclip_train/data/batching.py", (("rows.extend([group] * int(whole))",
                                                                 "rows.extend([group] * int(round(weight)))"),),
           T_WEIGHT, "a fractional weight rounded to whole copies"),
    Mutant("hub-struct-field-ignored", "altclip_train/data/corpora.py", (("values = pc.struct_field(values, rest)",
                                                                          "values = values"),),
           T_HUB, "translation.en read as the whole struct column"),
    Mutant("hub-split-ignored", "altclip_train/data/corpora.py", (("split=spec.split, cache_dir=datasets_cache).data.table",
                                                                   "split=\"train\", cache_dir=datasets_cache).data.table"),),
           T_HUB, "a hub corpus's split: ignored"),
    Mutant("verify-flag-dropped", "altclip_train/data/image_cache.py", (("verify=\"full\" if args.verify else \"stat\"",
                                                                         "verify=\"stat\""),),
           T_VERIFY, "cache-images --verify does a stat check only"),
    Mutant("export-drops-task-logit-bias", "altclip_train/tasks/contrastive.py",
           (("            model.config.logit_bias = float(task_bias.reshape(()))", "            pass"),),
           ("tests/test_contrastive.py::test_sigmoid_loss_on_a_clip_teacher_trains_and_its_bias_survives_export",),
           "model.loss=sigmoid on an AltCLIPModel: the trained bias is lost on export"),
    Mutant("license-flag-dropped", "altclip_train/export.py", (("write_model_card(model_dir, run_dir, license=args.license,",
                                                                "write_model_card(model_dir, run_dir, license=None,"),),
           T_LICENSE, "export --license ignored"),
    Mutant("pairs-per-s-counts-rows", TRAIN, (("pairs_per_s = pairs_in_window * accelerator.num_processes / max(elapsed, 1e-9)",
                                               "pairs_per_s = 2 * pairs_in_window * accelerator.num_processes / max(elapsed, 1e-9)"),),
           T_PAIRS_PER_S, "train/pairs_per_s counts student rows"),
    Mutant("pairs-per-s-never-resets", TRAIN, (("                running_loss, running_steps, window_start, pairs_in_window = None, 0, time.perf_counter(), 0",
                                                "                running_loss, running_steps = None, 0"),),
           T_PAIRS_PER_S, "train/pairs_per_s a running average since the start"),
    Mutant("unk-rate-counts-specials", "altclip_train/models/student.py", (("ids = tokenizer(texts, add_special_tokens=False)[\"input_ids\"]",
                                                                            "ids = tokenizer(texts)[\"input_ids\"]"),),
           T_UNK, "<unk> rate over tokens that include <s> and </s>"),
)


# --------------------------------------------------------------------------------------- the copy
def snapshot(dest: Path, worktree: bool, overlay: list[str]) -> str:
    """Fill `dest` with HEAD (or the working tree), plus `overlay` files from the working tree; returns what."""
    if worktree:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            source = REPO / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
        described = "working tree"
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, capture_output=True,
                                text=True).stdout.strip()
        described = f"HEAD ({commit})"
    for name in overlay:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    if overlay:
        described += " + " + ", ".join(overlay)
    return described


def child_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy's package must win over the editable install that points at the real checkout; no bytecode, so
    # a mutant written within the same second as the original can never be served a stale .pyc.
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_isolated(copy: Path) -> None:
    found = subprocess.run([sys.executable, "-c", "import altclip_train; print(altclip_train.__file__)"], cwd=copy,
                           env=child_env(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"mutants: the copy imports altclip_train from {found}, not from {copy}; refusing to run")


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float, basetemp: Path,
              every_failure: bool = False) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, the first failure line, or all of them)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfE",
               "--tb=short", f"--basetemp={basetemp}", *([] if every_failure else ["-x"]), *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, f"no result after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode == 0:
        return "passed", seconds, ""
    if done.returncode == 1:
        if every_failure:
            return "failed", seconds, "\n".join(line for line in output.splitlines() if line.startswith("FAILED"))
        return "failed", seconds, first_failure(output)
    return "error", seconds, f"pytest exit {done.returncode}: " + (first_failure(output) or output.strip()[-300:])


def first_failure(output: str) -> str:
    summary = next((line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
    detail = next((line.strip() for line in output.splitlines() if re.match(r"^E\s+\S", line)), "")
    return " | ".join(part for part in (summary, detail) if part)[:400]


def apply(source: str, edits: tuple[tuple[str, str], ...]) -> tuple[str | None, str]:
    """The mutated text and what was done, or None and why the mutant did not apply."""
    counts = []
    for old, new in edits:
        found = source.count(old)
        if found == 1:
            return source.replace(old, new), f"replaced {old.strip().splitlines()[0][:60]!r}"
        counts.append(found)
    return None, "mutation did not apply (text " + ", ".join(
        "not found" if n == 0 else f"found {n} times" for n in counts) + ")"


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="run the mutants whose names start with these")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--worktree", action="store_true", help="copy the working tree instead of HEAD")
    parser.add_argument("--with", dest="overlay", nargs="+", default=[], metavar="PATH",
                        help="working-tree files copied over the HEAD snapshot (e.g. tests not committed yet)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant's tests (default 300)")
    parser.add_argument("--json-out", help="write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.name.startswith(tuple(args.only))]
    if not mutants:
        parser.error(f"no mutant name starts with {args.only}")
    if args.list:
        for m in mutants:
            print(f"{m.name:38s} {m.path}\n{'':38s} {m.bug}\n{'':38s} tests: {', '.join(t.split('::')[-1] for t in m.tests)}")
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="altclip-mutants-"))
    copy = scratch / "repo"
    copy.mkdir()
    began = time.perf_counter()
    try:
        described = snapshot(copy, args.worktree, args.overlay)
        check_isolated(copy)
        print(f"mutants: {len(mutants)} on a copy of {described} in {copy}", flush=True)
        tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        status, seconds, detail = run_tests(copy, tests, args.timeout * 3, scratch / "pytest-baseline",
                                            every_failure=True)
        print(f"baseline: {len(tests)} test selections {status} in {seconds:.0f} s", flush=True)
        if status != "passed":
            print(f"mutants: the unmutated copy fails its tests, so no mutant can be judged:\n{detail}", file=sys.stderr)
            return 2

        results = []
        for number, mutant in enumerate(mutants, 1):
            path = copy / mutant.path
            original = path.read_text(encoding="utf-8") if path.is_file() else None
            mutated, note = apply(original, mutant.edits) if original is not None else (
                None, "mutation did not apply (file not found)")
            if mutated is None:
                outcome, seconds, detail = "not applied", 0.0, note
            else:
                path.write_text(mutated, encoding="utf-8")
                try:
                    status, seconds, detail = run_tests(copy, mutant.tests, args.timeout, scratch / f"pytest-{number}")
                finally:
                    path.write_text(original, encoding="utf-8")
                outcome = {"failed": "killed", "timeout": "killed (timeout)", "passed": "survived"}.get(status, "error")
            results.append({**asdict(mutant), "outcome": outcome, "seconds": round(seconds, 1), "detail": detail})
            print(f"[{number:2d}/{len(mutants)}] {outcome:16s} {mutant.name:38s} {seconds:5.0f} s  {detail[:150]}",
                  flush=True)
            shutil.rmtree(scratch / f"pytest-{number}", ignore_errors=True)
    finally:
        if args.keep:
            print(f"mutants: copy kept at {copy}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    killed = sum(r["outcome"].startswith("killed") for r in results)
    survived = [r for r in results if r["outcome"] == "survived"]
    skipped = [r for r in results if r["outcome"] == "not applied"]
    errors = [r for r in results if r["outcome"] == "error"]
    judged = killed + len(survived)
    score = killed / judged if judged else 0.0
    wall = time.perf_counter() - began
    print(f"\nmutation score: {killed}/{judged} killed = {score:.0%}  ({len(skipped)} did not apply, "
          f"{len(errors)} errors, {wall / 60:.1f} min)")
    for r in survived:
        print(f"  survived: {r['name']} ({r['path']}): {r['bug']}")
    for r in skipped + errors:
        print(f"  {r['outcome']}: {r['name']} ({r['path']}): {r['detail']}")
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"source": described, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                                   "killed": killed, "judged": judged, "score": score, "wall_s": round(wall),
                                   "results": results}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
