"""User tools run as ``python -m mnist_classification COMMAND``: ``predict`` and its image preparation.
"""
