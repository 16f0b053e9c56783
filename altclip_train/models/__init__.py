"""Model building: teacher adapters (one per family, `teachers/`), the AltCLIP text student, phase-2 assembly."""


def _register_altclip_siglip() -> None:
    """Make `AutoConfig`/`AutoModel` know AltCLIPSiglipModel in this process, so its exports load here without
    running their shipped modeling file (elsewhere they load with trust_remote_code)."""
    from transformers import AutoConfig, AutoModel

    from altclip_train.models.altclip_siglip import AltCLIPSiglipConfig, AltCLIPSiglipModel

    AutoConfig.register(AltCLIPSiglipConfig.model_type, AltCLIPSiglipConfig, exist_ok=True)
    AutoModel.register(AltCLIPSiglipConfig, AltCLIPSiglipModel, exist_ok=True)


_register_altclip_siglip()
