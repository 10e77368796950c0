"""Reports: evaluation metrics, plots, the training-history file and the stages' DVCLive loggers.
"""
