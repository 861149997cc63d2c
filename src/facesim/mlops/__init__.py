"""Layer 2, MLflow: runs of the stages (`tracking`, which imports no other facesim module), the
registry's champion rule and the served pair-verifying model (`registry`, `pyfunc`).

Imports `facesim.core` only.
"""
