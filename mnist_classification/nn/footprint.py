"""Memory that training a network from the ``train`` params needs, estimated before anything is allocated.

The estimate (float32, 4 bytes a value) counts, for the parameters: the
parameters, their gradients, the optimiser's state arrays and scratch, and the
two copies of the best weights that early stopping keeps at most; and, per
sample of a training batch, the input image, about eight values per hidden unit
or feature-map value (layer outputs, activation masks and caches, dropout masks,
backward gradients) and, for the whole-batch im2col method, each convolution's
column buffer (in channels x k x k values per pixel). It leaves out the data
(already loaded when it is checked), evaluation batches and temporaries, so it
is a lower bound: the default MLP is estimated at 23 MiB and the default CNN
(hidden [256]) at 322 MiB (518 MiB with im2col), against 296 MiB and 1.46 GiB
peaks measured for the whole train stage with the data (im2col).
:func:`check_training_memory` compares it with the memory available, so that
``train.hidden: [100000000]`` (at least 2.7 TiB) is refused naming that key
before training starts, instead of failing part way with "out of memory".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.memory import available_memory, format_bytes
from mnist_classification.nn.optimizers import make_optimizer

FLOAT_BYTES = 4
#: Values kept per hidden unit and sample of a training batch (outputs, masks, caches, gradients).
VALUES_PER_UNIT = 8
#: Copies of the weights besides the parameters and gradients: the best epoch's, and a newer one.
BEST_COPIES = 2


@dataclass(frozen=True)
class Footprint:
    """Estimated training memory in bytes, and the parameter counts behind it."""

    conv_parameters: int
    dense_parameters: int
    weights_bytes: int  # parameters, gradients, optimiser state, best-weight copies
    activation_bytes: int  # one training batch

    @property
    def total(self) -> int:
        return self.weights_bytes + self.activation_bytes


def training_footprint(train: dict, input_shape: tuple[int, int], classes: int) -> Footprint:
    """The estimate for the validated ``train`` params section, images ``input_shape`` and ``classes`` outputs.

    Mirrors :func:`mnist_classification.nn.network.build_network` (a test checks the
    parameter counts against networks it builds).
    """
    height, width = input_shape
    conv_parameters = units = columns = 0
    channels = 1
    if train["model"] == "cnn":
        cnn = train["cnn"]
        k2 = cnn["kernel_size"] ** 2
        for out_channels in cnn["channels"]:
            for in_channels in (channels, out_channels):
                conv_parameters += out_channels * in_channels * k2 + out_channels
                conv_parameters += 2 * out_channels if cnn["batch_norm"] else 0
                if cnn["conv"] == "im2col":  # the other methods' columns are per-thread blocks of a few MiB
                    columns += in_channels * k2 * height * width
                units += out_channels * height * width
            channels = out_channels
            height, width = height // 2, width // 2
    dense_parameters = 0
    fan_in = channels * height * width
    for fan_out in [*train["hidden"], classes]:
        dense_parameters += fan_in * fan_out + fan_out
        units += fan_out
        fan_in = fan_out
    optimizer = make_optimizer(train["optimizer"], train["lr"], train["momentum"], train["weight_decay"])
    copies = 2 + optimizer.state_arrays + 1 + BEST_COPIES  # params, grads, state + scratch, best weights
    batch = train["batch_size"]
    activations = batch * (math.prod(input_shape) + VALUES_PER_UNIT * units + columns)
    return Footprint(conv_parameters, dense_parameters,
                     FLOAT_BYTES * copies * (conv_parameters + dense_parameters), FLOAT_BYTES * activations)


def check_training_memory(train: dict, input_shape: tuple[int, int], classes: int,
                          path: str = "params.yaml") -> Footprint:
    """Raise PipelineError, naming the params key to change, if training would not fit in the memory available."""
    footprint = training_footprint(train, input_shape, classes)
    room = available_memory()
    if room is None or footprint.total <= room:
        return footprint
    if footprint.activation_bytes > footprint.weights_bytes:
        key, value = "train.batch_size", train["batch_size"]
    elif footprint.conv_parameters > footprint.dense_parameters:
        key, value = "train.cnn.channels", train["cnn"]["channels"]
    else:
        key, value = "train.hidden", train["hidden"]
    raise PipelineError(
        f"{path}: {key} is {value}: training would need at least {format_bytes(footprint.total)} of memory "
        f"(weights, gradients and optimiser state: {format_bytes(footprint.weights_bytes)}; activations of "
        f"a batch of {train['batch_size']}: {format_bytes(footprint.activation_bytes)}), more than the "
        f"{format_bytes(room)} available; choose a smaller {key}"
    )
