"""Code shared by the producer, the worker and the web service (no TensorFlow here except model.py)."""
