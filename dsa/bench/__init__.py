"""Benchmarks, each timing its candidates against a baseline in the same process: the ops and kernels
(``kernels``), the model's own attention layer (``layer``), a whole training step (``step_profile``)."""
