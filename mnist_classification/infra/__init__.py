"""Shared infrastructure: params loading and validation, errors, atomic writes, safe .npz reading, progress bars,
the numerical environment of a run.

Imports nothing else of the package.
"""
