"""Training: the Keras model, augmentation, export, calibration and the MNIST reader.

Nothing that serves (the worker's inference, the web) imports this package.
"""
