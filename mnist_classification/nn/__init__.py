"""The neural-network library: layers, activations, convolution, batch normalisation, losses,
initialisation, optimisers, schedules, the network (build/save/load), the training loop, augmentation.

Imports only :mod:`mnist_classification.infra`.
"""
