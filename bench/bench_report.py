"""What both benchmarks print: one line per network, or the whole result as JSON, with the machine.

The machine is the project's own record of the numerical environment (NumPy, BLAS library, kernel and
threads, CPU), as the train stage writes it into metrics/train.json, plus anything the bench adds.
"""

from __future__ import annotations

import json

from mnist_classification.infra.environment import numerical_environment


def machine(**extra) -> dict:
    """The numerical environment of this process, with ``extra`` keys (e.g. the torch version)."""
    return {**numerical_environment(), **extra}


def emit(results: dict[str, dict], lines: list[str], as_json: bool, **extra) -> None:
    """Print ``{"machine", "results"}`` as JSON, or the ``lines`` and then the machine."""
    if as_json:
        print(json.dumps({"machine": machine(**extra), "results": results}, indent=2))
    else:
        print("\n".join([*lines, f"machine: {machine(**extra)}"]))
