"""Which preprocessing made a stored image: recorded with each image ingest and uploads store.

Raise ``PREPROCESS_VERSION`` whenever ``shared/images/preprocess.py`` changes what it makes of
a picture, so images stored by an older preprocessing can be found (``input_data.preprocess_version``)
and made again. Kept apart until the preprocessing owns it.
"""

PREPROCESS_VERSION = 1
