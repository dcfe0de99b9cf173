"""The engine's core, plain Python without torch: sequences, the block manager, the scheduler, the
parameters and configuration a request and an engine are made of, and what the engine hands back."""
