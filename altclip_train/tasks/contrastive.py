"""Phase 2 (and the demo's teacher pretraining): contrastive image-text training of a two-tower model.

The same task trains the teacher family's phase-2 model (`AltCLIPModel`, `AltCLIPSiglipModel`) with its image
side frozen (LiT style, the AltCLIP recipe) or a plain `CLIPModel` with nothing frozen. What is frozen is
declared in config. The loss defaults to the teacher's own (InfoNCE for CLIP, sigmoid with the teacher's
scale and bias for SigLIP).

| batch key                     | shape            | what                                                  |
|-------------------------------|------------------|-------------------------------------------------------|
| `input_ids`, `attention_mask` | long [n, L]      | captions, padded per batch                            |
| `image_embeds`                | float [n, D]     | cached frozen image embeddings (image cache on)       |
| `pixel_values`                | float [n, 3, H, W] | the teacher's own preprocessing (image cache off)   |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from altclip_train.losses import build_contrastive_loss
from altclip_train.models.teachers import load_teacher
from altclip_train.tasks.base import Task
from altclip_train.tasks.distill import strip_prefix


class ContrastiveTask(Task):
    def __init__(self, model: nn.Module, tokenizer: str, image_processor: str, image_model: str | None = None,
                 freeze: Iterable[str] = (), loss: str | None = None, loss_options: dict | None = None, evaluator=None,
                 gradient_checkpointing: bool = False):
        """`image_model` names the checkpoint the frozen image side came from; the data module's
        image-embedding cache is keyed on it, and export records nothing else from it."""
        super().__init__()
        self.model = model
        self.image_model_source = image_model
        self.tokenizer_source = tokenizer
        self.image_processor_source = image_processor
        # DeepSpeed ZeRO broadcasts parameters through a byte view that fails on 0-dim tensors, so
        # logit_scale trains as shape [1] and is turned back into a scalar on export.
        self.model.logit_scale = nn.Parameter(self.model.logit_scale.detach().reshape(1).clone())
        self.teacher = load_teacher(image_model) if image_model else None
        if loss is None:  # the teacher's own loss; InfoNCE for a two-tower model trained from scratch
            loss, teacher_options = self.teacher.contrastive_loss if self.teacher is not None else ("clip", {})
            loss_options = {**teacher_options, **(loss_options or {})}
        self.loss = build_contrastive_loss(loss, **(loss_options or {}))
        own_bias, saved_bias = getattr(self.model, "logit_bias", None), None
        if self.loss.uses_logit_bias and own_bias is not None:
            # The model carries its teacher's trained bias (and scale): start from them, as SigLIP's authors would.
            self.model.logit_bias = nn.Parameter(own_bias.detach().reshape(1).clone())
            self.logit_bias = None
        else:
            # A model continued from an earlier sigmoid run keeps the bias that run stored in its config.
            self.logit_bias = None
            if self.loss.uses_logit_bias:
                saved_bias = getattr(getattr(self.model, "config", None), "logit_bias", None)
                start = self.loss.init_logit_bias if saved_bias is None else float(saved_bias)
                self.logit_bias = nn.Parameter(torch.tensor([start]))
        if self.loss.init_logit_scale is not None and self.logit_bias is not None and saved_bias is None:
            # SigLIP starts from its own scale (log 10 with bias -10), not the teacher's softmax temperature.
            with torch.no_grad():
                self.model.logit_scale.fill_(self.loss.init_logit_scale)
        self.freeze(freeze)
        if gradient_checkpointing:
            self.checkpoint_activations(self.compiled_modules())
        self.evaluator = evaluator

    def compiled_modules(self) -> list[nn.Module]:
        # The forward reaches the towers through get_text_features / get_image_features, not model(...).
        return [self.model.text_model, self.model.vision_model]

    @property
    def image_side_frozen(self) -> bool:
        image_params = list(self.model.vision_model.parameters())
        if hasattr(self.model, "visual_projection"):  # SigLIP's image embedding is its vision tower's pooled output
            image_params += list(self.model.visual_projection.parameters())
        return not any(p.requires_grad for p in image_params)

    def image_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        if "image_embeds" in batch:
            if not self.image_side_frozen:
                raise ValueError("cached image_embeds need a frozen vision tower and visual_projection; "
                                 "turn data.image_cache off or freeze them")
            return batch["image_embeds"].float()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_side_frozen):
            return self.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output

    def text_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.get_text_features(input_ids=batch["input_ids"],
                                            attention_mask=batch["attention_mask"]).pooler_output

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image, text = self.image_embeddings(batch), self.text_embeddings(batch)
        loss = self.loss(image, text, self.model.logit_scale.squeeze(), self._bias())
        return {"loss": loss, "logit_scale": self.model.logit_scale.detach().squeeze().exp(),
                "pairs": batch["input_ids"].shape[0]}

    def _bias(self):
        if not self.loss.uses_logit_bias:
            return None
        bias = self.logit_bias if self.logit_bias is not None else self.model.logit_bias
        return bias.squeeze()

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, Any]], accelerator) -> dict[str, float]:
        """Validation loss over held-out pairs, plus zero-shot / retrieval when an evaluator is set."""
        metrics: dict[str, float] = {}
        total, count = torch.zeros((), device=accelerator.device), 0
        for batch in batches:
            total += self.forward(batch)["loss"].float()
            count += 1
        if count:
            metrics["val/loss"] = accelerator.reduce(total / count, reduction="mean").item()
        if self.evaluator is not None:
            metrics.update(self.evaluator.evaluate(self.model, accelerator.device))
        return metrics

    def export(self, output_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """The model with its tokenizer and its teacher family's processor, loadable with plain transformers.

        A sigmoid loss trained on a model without a bias of its own keeps that bias in `config.logit_bias`:
        rankings and softmax scores do not depend on it, sigmoid probabilities do.
        """
        from transformers import AutoTokenizer

        output_dir = Path(output_dir)
        if state_dict is not None:
            state = strip_prefix(state_dict, "model.")
        else:
            state = dict(self.model.state_dict(), **({"logit_bias": self.logit_bias} if self.logit_bias is not None else {}))
        model = type(self.model)(self.model.config)
        # A bias the task added (the model has no slot for one) is the only unprefixed "logit_bias".
        task_bias = None if hasattr(model, "logit_bias") else state.pop("logit_bias", None)
        for key in ("logit_scale", "logit_bias"):
            if key in state:
                state[key] = state[key].reshape(())  # trained as shape [1] (see __init__)
        if task_bias is not None:
            model.config.logit_bias = float(task_bias.reshape(()))
        model.load_state_dict(state)
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
        if self.teacher is not None:
            self.teacher.save_contrastive_model(model, output_dir, tokenizer)
        else:
            from altclip_train.models.teachers import image_preprocessor

            model.save_pretrained(output_dir, safe_serialization=True)
            tokenizer.save_pretrained(output_dir)
            image_preprocessor(self.image_processor_source).save_pretrained(output_dir)
        return output_dir
