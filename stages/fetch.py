"""Stage fetch: download the dataset named by params fetch.dataset into data/raw (verified, canonical gzip).

Set DATASET_MIRROR to a local folder or an http(s) URL prefix to try it before the public mirrors.
"""

from mnist_classification.data.datasets import get_dataset
from mnist_classification.data.download import fetch_dataset
from mnist_classification.infra.errors import run_cli
from mnist_classification.infra.params import load_params

RAW_DIR = "data/raw"


def main() -> None:
    """Fetch data/raw/{4 IDX .gz files, dataset.json}."""
    params = load_params("params.yaml")
    fetch_dataset(get_dataset(params["fetch"]["dataset"], params["fetch"]["custom"]), RAW_DIR)


if __name__ == "__main__":
    run_cli(main, "fetch")
