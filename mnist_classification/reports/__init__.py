"""Reports: evaluation metrics, plots and the training-history file.
"""
