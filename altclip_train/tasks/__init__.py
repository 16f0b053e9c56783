"""Tasks: each owns a model and its loss and turns a batch into {"loss": ..., metrics}."""
