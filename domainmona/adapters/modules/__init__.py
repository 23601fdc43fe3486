"""Trainable building blocks that methods attach to a backbone (Mona, bottleneck adapters, LoRA)."""
