"""Layer 1, the building blocks: images, face framing, preprocessing, networks, losses, metrics,
params parsing, all-or-nothing outputs, loading a trained model for inference.

Imports no other facesim layer. (Package `__init__` files hold no code: tests/test_architecture.py.)
"""
