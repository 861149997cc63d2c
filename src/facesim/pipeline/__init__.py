"""Layer 3, the DVC stages' work: fetch, sample, train, evaluate, robustness, cross-validation,
render, and the process settings every stage script runs under (`runtime`).

Imports `facesim.core` and `facesim.mlops`.
"""
