"""Domain-free adapter core: Mona and peer PEFT methods, injection, fusion, adapter checkpoints."""
