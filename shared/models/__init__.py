"""Model versions: their files, their SQL and the registry's rules.

The runtimes (``shared.models.runtime`` for LiteRT, ``shared.models.keras_runtime`` for TensorFlow)
are imported by name where needed: the web must never load a model runtime.
"""

from shared.models import files, registry, store

__all__ = ["files", "registry", "store"]
