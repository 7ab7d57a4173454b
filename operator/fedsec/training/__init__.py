"""Local training and evaluation: data loading and partitioning (``data``), models (``models``), the
training loop (``local``).

Pure library code with plain typed arguments, used by the client process (local training,
validation) and by the aggregator (model initialisation, holdout evaluation). The package itself
re-exports nothing: ``training.data`` needs no torch, and whoever reads only data (the launcher's
preflight, ``fedsec validate``) should not pay for importing it.
"""
