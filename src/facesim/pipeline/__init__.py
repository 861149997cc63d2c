"""Layer 4, the DVC stages' work: fetch, sample, train, evaluate, robustness, export, cross-validation,
render, and what every stage script starts and ends with (`runtime`).

Imports `facesim.core`, `facesim.mlops` and `facesim.training`.
"""
