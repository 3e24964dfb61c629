"""Data plane: what runs inside a Ray worker. Knows nothing of the study storage.

Importing this package imports neither TensorFlow nor Ray; the modules that
need them import them where they are used.
"""
