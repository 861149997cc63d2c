"""Layer 5, using trained models: the Python API (`facesim.api` re-exports it), the gallery's
embedding cache and the `facesim` command line.

Imports any lower layer.
"""
