"""Training: hardware profile, plan, datasets, packing and our own torchrun LoRA engine."""
