"""Shared infrastructure: params loading and validation, errors, atomic writes, safe .npz reading, progress.

Imports nothing else of the package.
"""
