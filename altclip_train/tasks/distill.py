"""Phase 1: distil a teacher's text tower (any family in `models/teachers/`) into an AltCLIPTextModel with MSE.

| batch key                 | shape          | what                                                   |
|---------------------------|----------------|--------------------------------------------------------|
| `student_input_ids`, `student_attention_mask` | long [2n, L] | English rows, then their translations   |
| `teacher_embeds`          | float [2n, D]  | cached targets (teacher cache on)                      |
| `teacher_input_ids`, `teacher_attention_mask` | long [n, T] | English for the live teacher (cache off) |
| `source_index`, `lang`    | [2n]           | validation only: the English row and each row's language |

Each batch row is one student sentence (the English side or its translation) with the teacher's
target for the English side: the English-English rows keep the student's English close to CLIP's,
which the paper's ablation shows matters. Targets normally come from the on-disk teacher cache
(`teacher_embeds`); with the cache off the task runs the teacher live on `teacher_input_ids`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from altclip_train.losses import distill_mse_loss, translation_contrastive_loss
from altclip_train.models.student import build_student
from altclip_train.models.teachers import load_teacher
from altclip_train.tasks.base import Task

log = logging.getLogger(__name__)


LOSSES = ("mse", "mse+contrastive")


class DistillTask(Task):
    """`loss=mse` (AltCLIP's objective) or `mse+contrastive`: MSE plus `contrastive_weight` x an in-batch InfoNCE
    from each translation's student vector to its English source's teacher target (`contrastive_temperature`),
    which pushes translations apart from other sentences' targets, not only towards their own."""

    def __init__(self, teacher: str, student: str, student_tokenizer: str | None = None,
                 freeze: Iterable[str] = (), teacher_cache: bool = True, trust_remote_code: bool = False,
                 gradient_checkpointing: bool = False, distill_target: str | None = None, loss: str = "mse",
                 contrastive_weight: float = 1.0, contrastive_temperature: float = 0.05):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"model.loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if contrastive_temperature <= 0:
            raise ValueError(f"model.contrastive_temperature={contrastive_temperature}: must be positive")
        self.loss_name, self.contrastive_weight = loss, float(contrastive_weight)
        self.contrastive_temperature = float(contrastive_temperature)
        self.teacher_name = teacher
        self.teacher = load_teacher(teacher, distill_target, trust_remote_code)
        self.student_tokenizer = student_tokenizer or student
        self.model = build_student(student, self.teacher.text_dim, trust_remote_code)
        # Phase 2 reads from here which space the student speaks (and which teacher it was taught by).
        record_distillation(self.model.config, self.teacher.describe())
        self.freeze(freeze)
        if gradient_checkpointing:
            self.checkpoint_activations([self.model])
        # The live teacher is deliberately not a registered submodule: it is never trained, so it
        # stays out of checkpoints, the optimizer and DDP's gradient buckets.
        self._live_teacher = None if teacher_cache else [self.teacher.load_text_encoder()]

    def compiled_modules(self) -> list[torch.nn.Module]:
        return [self.model, *(self._live_teacher or [])]

    def teacher_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        if "teacher_embeds" in batch:
            return batch["teacher_embeds"].float()
        if self._live_teacher is None:
            raise KeyError("batch has no teacher_embeds and the task was built with teacher_cache=true")
        teacher = self._live_teacher[0]
        device = batch["teacher_input_ids"].device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        pooled = teacher(batch["teacher_input_ids"], batch["teacher_attention_mask"])
        # Both student rows of a pair (English, translation) share the English target.
        repeats = batch["student_input_ids"].shape[0] // pooled.shape[0]
        return pooled.repeat(repeats, 1)

    def student_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(input_ids=batch["student_input_ids"],
                          attention_mask=batch["student_attention_mask"]).pooler_output

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        target = self.teacher_targets(batch)
        # Student rows come two per pair (English, translation); the loop logs pairs/s from this.
        pairs = batch["student_input_ids"].shape[0] // 2
        student = self.student_embeddings(batch)
        mse = distill_mse_loss(student, target)
        if self.loss_name == "mse":
            return {"loss": mse, "pairs": pairs}
        sources = batch.get("source_index")
        contrastive = translation_contrastive_loss(student[pairs:], target[:pairs],
                                                   None if sources is None else sources[:pairs],
                                                   self.contrastive_temperature)
        return {"loss": mse + self.contrastive_weight * contrastive, "mse": mse.detach(),
                "contrastive": contrastive.detach(), "pairs": pairs}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, Any]], accelerator) -> dict[str, float]:
        """Per language: MSE to the teacher, and translation retrieval accuracy (top-1).

        A translated sentence is right when its student vector is nearest (Euclidean, the geometry
        the MSE loss trains) to the teacher vector of its own English source among all of that
        language's validation sources.
        """
        student, teacher, langs, sources = [], [], [], []
        for batch in batches:
            # Padding rows (source_index -1) keep every rank's batches the same shape, which
            # collectives (and ZeRO-3's parameter gathers) require; they are dropped below.
            student.append(gather_rows(accelerator, self.student_embeddings(batch).float()))
            teacher.append(gather_rows(accelerator, self.teacher_targets(batch)))
            sources.append(gather_rows(accelerator, batch["source_index"]))
            langs.extend(gather_strings(batch["lang"], accelerator))
        if not student:
            return {}
        keep = torch.cat(sources) >= 0
        student, teacher, sources = torch.cat(student)[keep], torch.cat(teacher)[keep], torch.cat(sources)[keep]
        langs = [lang for lang, kept in zip(langs, keep.tolist()) if kept]
        metrics: dict[str, float] = {}
        by_lang = defaultdict(list)
        for row, lang in enumerate(langs):
            by_lang[lang].append(row)
        for lang, rows in sorted(by_lang.items()):
            rows = torch.tensor(rows, device=student.device)
            metrics[f"val/mse/{lang}"] = F.mse_loss(student[rows], teacher[rows]).item()
            metrics[f"val/translation_acc/{lang}"] = translation_accuracy(student[rows], teacher[rows], sources[rows])
        metrics["val/mse"] = F.mse_loss(student, teacher).item()
        return metrics

    def export(self, output_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """`AltCLIPTextModel` + the student tokenizer, loadable with plain transformers."""
        from transformers import AutoTokenizer

        output_dir = Path(output_dir)
        model = self.model
        if state_dict is not None:
            # A fresh fp32 model: under DeepSpeed the trained one may be bf16 or a ZeRO-3 shard.
            model = type(self.model)(self.model.config)
            model.load_state_dict(strip_prefix(state_dict, "model."))
        model.save_pretrained(output_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.student_tokenizer).save_pretrained(output_dir)
        from altclip_train.export import add_auto_model_entry

        add_auto_model_entry(output_dir)  # transformers' AutoModel has no entry for AltCLIPTextModel
        return output_dir


def record_distillation(config, teacher: dict) -> None:
    """Note in the student's config.json which teacher and target it was distilled to (read by phase 2)."""
    config.altclip_train = {"teacher_family": teacher["family"], "teacher": teacher["source"],
                            "distill_target": teacher["distill_target"]}


def translation_accuracy(student: torch.Tensor, teacher: torch.Tensor, sources: torch.Tensor) -> float:
    """Share of rows whose nearest teacher vector (deduplicated by source sentence) is their own."""
    unique_sources, first = unique_first_index(sources)
    distances = torch.cdist(student, teacher[first])
    predicted = unique_sources[distances.argmin(dim=-1)]
    return (predicted == sources).float().mean().item()


def unique_first_index(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    unique, inverse = torch.unique(values, return_inverse=True)
    positions = torch.arange(len(values), device=values.device)
    first = torch.full((len(unique),), len(values), device=values.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


def gather_rows(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows in rank order (every rank holds the same number of rows)."""
    return accelerator.gather(tensor.contiguous()) if accelerator.num_processes > 1 else tensor


def gather_strings(strings: list[str], accelerator) -> list[str]:
    from accelerate.utils import gather_object

    return list(gather_object(list(strings))) if accelerator.num_processes > 1 else list(strings)


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state_dict.items()}
