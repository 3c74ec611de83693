"""Training: the layer-streamed LoRA engine, the in-memory engine, checkpoints. Not implemented yet."""
