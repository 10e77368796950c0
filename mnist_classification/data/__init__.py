"""Data handling: IDX files, download and mirrors, dataset definitions, preprocessing and the prepared-data reader.

Imports only :mod:`mnist_classification.infra`.
"""
