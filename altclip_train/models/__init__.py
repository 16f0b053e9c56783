"""Model building: teacher CLIP towers, the AltCLIP text student, assembly and export to transformers AltCLIP."""
