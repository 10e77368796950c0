"""Convolution layers (being written)."""

CONV_LAYERS: tuple = ()


def conv_feature_layers(channels, kernel_size, batch_norm, activation, init, rng):
    raise NotImplementedError("the CNN is being written")
