"""xrec: transfer learning of pretrained sequential recommenders in JAX."""

__version__ = "0.1.0"
