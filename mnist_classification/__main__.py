"""Command line: ``python -m mnist_classification COMMAND ...`` (also installed as ``mnist-classification``).

Commands:
  predict   classify digit images (PNG/JPEG) or a batch (.npy / IDX) with a trained model
  sweep     run a grid of DVC experiments on a Dask cluster (local or remote)

Each command is a module exposing ``add_arguments(parser)`` and ``run(args)``
(which may return an exit status, as ``predict`` returns 1 when some inputs
were not classified); add one to :data:`COMMANDS` to extend the CLI. Errors the user can fix
(:class:`~mnist_classification.infra.errors.PipelineError`) print one line and exit
with status 2 (see :func:`~mnist_classification.infra.errors.run_cli`).
"""

from __future__ import annotations

import argparse
import importlib
import textwrap
from collections.abc import Sequence

from mnist_classification.infra.errors import run_cli

PROG = "mnist-classification"

#: name -> (module with add_arguments/run, one-line help, description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "predict": (
        "mnist_classification.tools.predict",
        "classify digit images or a batch of MNIST-style images with a trained model",
        ("Classify your own digit images with a trained model (MLP or CNN). Each image (PNG or JPEG, one "
        "digit, dark on light or light on dark) is converted to an MNIST-like 28x28 input the way MNIST "
        "was made - grayscale, ink made white on black, cropped to the ink, scaled to fit 20x20 keeping "
        "its aspect ratio, centred by its centre of mass - and normalised with the model's own "
        "statistics; the predicted class, its probability and the top three are printed. A .npy or IDX "
        "file is a batch of images that are already MNIST-like; its predictions go to a CSV."),
    ),
    "sweep": (
        "mnist_classification.tools.sweep",
        "run a grid of DVC experiments on a Dask cluster, shared through the git and DVC remotes",
        ("Run every point of a -S grid (the syntax of `dvc exp run --queue`) as a DVC experiment on a Dask "
         "cluster: an embedded one on 127.0.0.1 sized to the cores, or an existing one (--scheduler). Each "
         "task clones the project's git remote at the current commit, takes its inputs from the DVC remote, "
         "runs `dvc exp run` and pushes the experiment; at the end every experiment is pulled into this "
         "repository (`dvc exp show`, `dvc exp apply NAME`) and the workspace is left untouched."),
    ),
}

EPILOG = {
    "sweep": (
        "examples:\n"
        "  python -m mnist_classification sweep -S 'train.lr=0.001,0.002' -S 'train.hidden=[256],[800]'\n"
        "  python -m mnist_classification sweep --scheduler tls://HOST:8786 --tls-ca-file ca.pem \\\n"
        "      --tls-cert client.pem --tls-key client-key.pem --name-prefix lr -S 'train.lr=0.001,0.002'\n"
        "\n"
        "needs: a git remote holding the current commit, a default DVC remote (credentials with\n"
        "`dvc remote modify --local`); exit status: 0 when every grid point succeeded, 2 otherwise"
    ),
    "predict": (
        "examples:\n"
        "  python -m mnist_classification predict my_digit.jpg\n"
        "  python -m mnist_classification predict --show --json a.png b.png\n"
        "  python -m mnist_classification predict --model models/model.npz digits.npy --output preds.csv\n"
        "  python -m mnist_classification predict --model a.npz --model b.npz my_digit.jpg   # a committee\n"
        "  python -m mnist_classification predict --model committee/models/committee.json my_digit.jpg\n"
        "\n"
        "Every input gets its own result, in order; an input that cannot be read or holds no digit\n"
        "gets an error (on stderr, or an {\"file\", \"error\"} entry with --json) and the rest are\n"
        "still classified.\n"
        "\n"
        "exit status: 0 all inputs classified, 1 some inputs not classified (each named with the\n"
        "reason), 2 usage or model error (one-line message)"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="MNIST classification from scratch in NumPy.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text, description) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=textwrap.fill(description, 79), epilog=EPILOG.get(name),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: sys.argv[1:]) and run the command; exits with its status."""
    args = build_parser().parse_args(argv)
    run_cli(lambda: _exit_on_status(args.run(args)), f"{PROG} {args.command}")


def _exit_on_status(status: int | None) -> None:
    """A command's ``run`` returns None or its exit status; a non-zero status ends the process with it."""
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
