"""Model building: teacher adapters (one per family, `teachers/`), the AltCLIP text student, phase-2 assembly."""
