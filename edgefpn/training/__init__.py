"""Training internals: the loop, the global-batch sampler and the torchrun / DDP plumbing (see
docs/ARCHITECTURE.md)."""
