"""facesim: face similarity with Siamese networks on the AT&T/ORL faces."""

__version__ = "0.1.0"
