"""The one training loop both phases share: build, prepare, step, log, evaluate, checkpoint, export.

What differs between phases lives in config: `model` instantiates a Task (model + loss + freezing),
`data` instantiates a data module. The loop never asks which phase it runs. Launch it through the
CLI (`altclip-train distill ...`, `altclip-train contrastive ...`), directly or under
`accelerate launch` for DDP / DeepSpeed / FSDP.

Data module contract: `setup(accelerator)`, `num_train_batches(epoch)`,
`train_batches(epoch, start_batch)` (this rank's micro-batches, `grad_accum` per global batch),
`val_batches()` or None, and a `skipped` Counter of dropped samples.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from altclip_train.config_schema import validate
from altclip_train.distributed import apply_scheduler_env
from altclip_train.checkpoint import (TrainState, frozen_weights, full_state_dict, load_checkpoint, resolve_resume,
                                      save_checkpoint)
from altclip_train.tracking import MetricsLog, flat_config, tracker_init_kwargs
from altclip_train.logging_setup import setup_logging

log = logging.getLogger("altclip_train")


# --------------------------------------------------------------------------- building blocks
def build_accelerator(cfg: DictConfig):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    apply_scheduler_env()  # a job started one task per GPU by SLURM/submitit has no RANK etc. yet
    trainer = cfg.trainer
    on_cpu = trainer.cpu if trainer.cpu != "auto" else not torch.cuda.is_available()
    # gloo is the process group that works on CPU (plain DDP and DeepSpeed); only set it when
    # there is a group to make, since a single process must not try to initialise one.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and distributed else []
    # Accelerate drops a DeepSpeed launch config when cpu=True; on CPU DeepSpeed runs through its
    # own CPU accelerator (DS_ACCELERATOR=cpu) instead, so only plain runs take the cpu flag.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        cpu=on_cpu and not deepspeed,
        mixed_precision=None if on_cpu else trainer.mixed_precision,
        gradient_accumulation_steps=trainer.grad_accum_steps,
        log_with=list(cfg.logger.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(cfg.run_dir), logging_dir=str(cfg.run_dir)),
        kwargs_handlers=handlers,
    )
    if accelerator.state.deepspeed_plugin is not None:
        configure_deepspeed(accelerator, cfg)
    return accelerator


def configure_deepspeed(accelerator, cfg: DictConfig) -> None:
    """Fill DeepSpeed's batch/clip fields from our config, since we never hand it a DataLoader."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    accum = cfg.trainer.grad_accum_steps
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size // (accelerator.num_processes * accum)
    ds["train_batch_size"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = accum
    ds["gradient_clipping"] = cfg.optim.grad_clip or 0.0
    # Our torch AdamW is handed to DeepSpeed as a client optimizer (an "optimizer" section here
    # would clash with it), so no fused CUDA Adam is needed and CPU runs work as they are.
    ds["zero_allow_untested_optimizer"] = True
    # Tasks and caches build whole models (they copy weights between towers) and `prepare` partitions
    # them afterwards. Accelerate registers ZeRO-3 with transformers even with zero3_init_flag off,
    # which would make every later from_pretrained return empty shards, so take that back.
    from transformers.integrations import unset_hf_deepspeed_config

    accelerator.state.deepspeed_plugin.zero3_init_flag = False
    unset_hf_deepspeed_config()


def build_optimizer(task, optim: DictConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only; no weight decay on biases, norms and scalars."""
    decay, no_decay = [], []
    for name, param in task.trainable_named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    if not decay and not no_decay:
        raise ValueError("every parameter is frozen: nothing to train (check model.freeze)")
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one pass (CPU and CUDA): 7.8 -> 1.4 ms per step for the
    # 1.5M-parameter benchmark student on one CPU thread (BENCHMARKS.md).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps, fused=fused)


def compile_model(task, enabled: bool) -> None:
    """`trainer.compile`: torch.compile each module the task's forward calls, in place (`nn.Module.compile`),
    so parameter names, checkpoints and the export are exactly an eager run's (no `_orig_mod.` prefix).
    Per-batch padding varies the sequence length: the second shape recompiles once with dynamic sizes."""
    if enabled:
        for module in task.compiled_modules():
            module.compile()


def training_step(accelerator, task, core, optimizer, batch: dict, grad_clip: float | None) -> dict:
    """One micro-batch: forward, backward and, on the last micro-batch of a global batch, clip and step."""
    with accelerator.accumulate(task):
        outputs = task(batch)
        accelerator.backward(outputs["loss"])
        if accelerator.sync_gradients and grad_clip:
            accelerator.clip_grad_norm_(core.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return outputs


def lr_factor(step: int, total_steps: int, optim: DictConfig) -> float:
    """Linear warmup, then cosine/linear decay to `min_lr_ratio`, or constant."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape


def set_cpu_threads(setting) -> None:
    """Intra-op threads per process. `auto`: half of this process's share of the cores, leaving the
    rest to data workers and other ranks; oversubscribed OpenMP threads spin and can make a small
    model's step ten times slower on a busy CPU."""
    if setting in (None, "none"):
        return
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        setting = max(1, cores // local_processes // 2)
    torch.set_num_threads(int(setting))


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1 (SLURM preemption or time limit) or SIGUSR2 (submitit's time-limit
    signal); acted on at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.signum = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, _frame):
        self.signum = signum

    def agreed(self, accelerator) -> int | None:
        """The signal if any rank got one, so all ranks stop at the same step."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=accelerator.device)
        return int(accelerator.gather(flag).max().item()) or None  # max: every rank may have it

    def restore(self, hand_over: int | None = None) -> None:
        """Put back the handlers found at start; with `hand_over`, pass that signal on to the one
        that was there (under submitit it requeues the job, now that the checkpoint is safe)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        handler = self.previous.get(hand_over)
        if callable(handler):
            handler(hand_over, None)


# --------------------------------------------------------------------------- the loop
def train(cfg: DictConfig) -> Path:
    """Run one training job described by `cfg`; returns the exported model dir (run_dir/final).

    The signal handlers found at start are back when it returns or raises, so a failed run leaves no
    preemption handler behind in the caller's process."""
    found = {sig: signal.getsignal(sig) for sig in PreemptionFlag.SIGNALS}
    try:
        return run_training(cfg)
    finally:
        for sig, handler in found.items():
            if handler is not None:
                signal.signal(sig, handler)


def run_training(cfg: DictConfig) -> Path:
    validate(cfg)
    set_cpu_threads(cfg.trainer.cpu_threads)
    run_dir = Path(cfg.run_dir)
    accelerator = build_accelerator(cfg)
    setup_logging(logging.INFO if accelerator.is_main_process else logging.WARNING)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    # ---- build: the task owns model + loss; the data module owns batches
    task = instantiate(cfg.model, _convert_="all")
    data = instantiate(cfg.data, _convert_="all")
    data.setup(accelerator)
    optimizer = build_optimizer(task, cfg.optim)
    frozen = frozen_weights(task) if accelerator.state.deepspeed_plugin is not None else None
    task, optimizer = accelerator.prepare(task, optimizer)
    core = accelerator.unwrap_model(task)
    compile_model(core, cfg.trainer.compile)

    batches_per_epoch = data.num_train_batches(0)
    total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * batches_per_epoch
    state = TrainState()
    resume_from = resolve_resume(cfg.trainer.resume, run_dir)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
    # Batch skip counts are per rank; the checkpoint holds their sum, so only rank 0 restores it.
    skipped = Counter(state.skipped) if accelerator.is_main_process else Counter()

    accelerator.init_trackers(cfg.logger.project, config=flat_config(cfg),
                              init_kwargs=tracker_init_kwargs(cfg.logger, run_dir, cfg.name))
    metrics_log = MetricsLog(accelerator, run_dir)
    preemption = PreemptionFlag()

    def evaluate() -> dict[str, float]:
        core.eval()
        # Tasks evaluate even without held-out batches (phase 2 may only have a zero-shot evaluator).
        val = data.val_batches() or ()
        metrics = core.evaluate((to_device(b, accelerator.device) for b in val), accelerator)
        core.train()
        if metrics:
            metrics_log.log(metrics, state.step)
            if accelerator.is_main_process:
                log.info("step %d: %s", state.step, format_metrics(metrics))
        return metrics

    def checkpoint() -> None:
        state.skipped = dict(total_skips(accelerator, skipped, Counter()))
        save_checkpoint(accelerator, run_dir, state, cfg.trainer.keep_last)

    # A run that grows a model to new languages is measured before its first step (the forgetting report).
    language_roles = getattr(data, "language_roles", None) or {}
    if state.step == 0 and (cfg.trainer.eval_at_start or language_roles):
        evaluate()

    progress = tqdm(total=total_steps, initial=state.step, desc=cfg.name, unit="step",
                    disable=not accelerator.is_main_process or None, dynamic_ncols=True)
    task.train()
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr * lr_factor(state.step, total_steps, cfg.optim)
    running_loss, running_steps, window_start, pairs_in_window = None, 0, time.perf_counter(), 0
    micro_batches = 0  # since the last optimizer step
    while state.step < total_steps:
        for batch in data.train_batches(state.epoch, state.batch_in_epoch):
            # ---- single training step (one micro-batch; the optimizer steps once per global batch)
            skipped.update(batch.pop("skipped", None) or {})
            batch = to_device(batch, accelerator.device)
            outputs = training_step(accelerator, task, core, optimizer, batch, cfg.optim.grad_clip)
            detached = {k: v.detach().float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
            running_loss = detached if running_loss is None else {k: running_loss[k] + v for k, v in detached.items()}
            running_steps += 1
            pairs_in_window += int(outputs.get("pairs", 0))  # each task counts its own (phase 1: 2 rows a pair)
            micro_batches += 1
            if not accelerator.sync_gradients:
                continue
            if micro_batches != accelerator.gradient_accumulation_steps:
                # The data module hands out whole global batches, so a step over any other count mixes
                # two of them; every later step would too, and nothing else would show it.
                raise RuntimeError(f"optimizer step {state.step + 1} took {micro_batches} micro-batches, not "
                                   f"trainer.grad_accum_steps={accelerator.gradient_accumulation_steps}: the "
                                   "accumulation boundary is out of step with the data's global batches")
            micro_batches = 0
            state.step += 1
            state.batch_in_epoch += 1
            for group in optimizer.param_groups:
                group["lr"] = cfg.optim.lr * lr_factor(state.step, total_steps, cfg.optim)
            progress.update(1)

            # ---- log (the only place the loss leaves the device)
            if state.step % cfg.trainer.log_every == 0 or state.step == total_steps:
                averaged = {f"train/{k}": accelerator.reduce(v / running_steps, reduction="mean").item()
                            for k, v in running_loss.items()}
                elapsed = time.perf_counter() - window_start
                pairs_per_s = pairs_in_window * accelerator.num_processes / max(elapsed, 1e-9)
                # The window after a resume is shorter than log_every: say how many steps the averages cover.
                averaged.update({"train/lr": optimizer.param_groups[0]["lr"], "train/pairs_per_s": pairs_per_s,
                                 "train/epoch": state.epoch,
                                 "train/window_steps": running_steps // accelerator.gradient_accumulation_steps})
                metrics_log.log(averaged, state.step)
                progress.set_postfix(loss=f"{averaged['train/loss']:.4g}", pairs_s=f"{pairs_per_s:.0f}")
                running_loss, running_steps, window_start, pairs_in_window = None, 0, time.perf_counter(), 0

            # ---- evaluate
            if cfg.trainer.eval_every and state.step % cfg.trainer.eval_every == 0 and state.step < total_steps:
                evaluate()

            # ---- save checkpoint
            if cfg.trainer.save_every and state.step % cfg.trainer.save_every == 0:
                checkpoint()

            # ---- preemption: save at this step boundary and leave with a requeue-able code
            if state.step % cfg.trainer.signal_check_every == 0 or state.step == total_steps:
                signum = preemption.agreed(accelerator)
                if signum:
                    log.warning("signal %d received: saving at step %d and exiting for requeue", signum, state.step)
                    checkpoint()
                    accelerator.end_training()
                    preemption.restore(hand_over=signum)
                    sys.exit(128 + signum)
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()

    # ---- final evaluation, checkpoint and export
    evaluate()
    if cfg.trainer.save_every and state.step % cfg.trainer.save_every:
        checkpoint()
    full_state = full_state_dict(accelerator, task, frozen)
    final_dir = run_dir / "final"
    skipped = total_skips(accelerator, skipped, data.skipped)
    if accelerator.is_main_process:
        core.export(final_dir, full_state)
        from altclip_train.model_card import card_after_training

        card_after_training(final_dir, run_dir)  # README.md with the Hub's front matter, results, the command
        if language_roles:
            from altclip_train.evaluate.forgetting import write_forgetting_report

            try:
                write_forgetting_report(run_dir, language_roles)
            except ValueError as error:  # e.g. phase 2 with no evaluator: nothing per language to compare
                log.warning("no forgetting report: %s", error)
        if skipped:
            log.warning("skipped samples: %s", dict(skipped))
        metrics_log.log({f"skipped/{k}": float(v) for k, v in skipped.items()}, state.step)
        log.info("model written to %s", final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    preemption.restore()
    return final_dir


def total_skips(accelerator, batch_skips: Counter, setup_skips: Counter) -> Counter:
    """Skips counted in batches on every rank, summed, plus those found once while building data."""
    from accelerate.utils import gather_object

    total = Counter(setup_skips)
    per_rank = gather_object([dict(batch_skips)]) if accelerator.num_processes > 1 else [dict(batch_skips)]
    for counts in per_rank:
        total.update(counts)
    return total


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
