"""Training: the trainer (dense, DSA as DeepSeek trains it, sparse from scratch), the study's experiments as
lists of configs, resumable sweeps (claims, shards, Slurm), data-parallel helpers."""
