"""altclip-train: train multilingual CLIP models the AltCLIP way (distillation, then contrastive tuning)."""

__version__ = "0.1.0"
