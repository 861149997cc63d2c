"""Layer 2, MLflow: runs of the stages (`tracking`) and what a stage logs to (`runs`), neither of which
imports any other facesim module; the registry's champion rule and the served pair-verifying model
(`registry`, `pyfunc`).

Imports `facesim.core` only.
"""
