"""Images: the storage codec, a user's picture turned into MNIST form, and their SQL."""

from shared.images import bulk_load, codec, preprocess, store

__all__ = ["bulk_load", "codec", "preprocess", "store"]
