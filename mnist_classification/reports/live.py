"""DVCLive loggers for the pipeline's stages.

The stages log through DVCLive (the DVC team's experiment logger) in its folder
layout, so `dvc exp show`, `dvc plots` and the VS Code extension read them; the
project's dvc.yaml stays hand-written (``dvcyaml=False``), no report is made and
no experiment is saved by DVCLive itself (DVC does that under `dvc exp run`).

:class:`StageLive` writes ``metrics.json`` through the project's atomic writer,
so a reader (`dvc exp show` polling a running experiment) never sees half a
file. :func:`staged_live` is for a stage whose outputs must change together: it
logs into a temporary folder and then writes each file in place with the atomic
writers, so inside :func:`~mnist_classification.infra.atomic.all_or_nothing`
they are replaced with the stage's other outputs, or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from dvclive import Live

from mnist_classification.infra.atomic import all_or_nothing, write_bytes, write_json


class StageLive(Live):
    """A DVCLive logger writing to ``directory`` (its ``metrics.json`` and ``plots/``), nothing else.

    Used as a context manager, an error or Ctrl-C inside the block puts back the files the folder
    held before (DVCLive clears them when it starts), so an interrupted run changes nothing.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        folder = Path(directory)
        self._previous = {path.relative_to(folder): path.read_bytes()
                          for path in sorted(folder.rglob("*")) if path.is_file()} if folder.is_dir() else {}
        super().__init__(os.fspath(directory), dvcyaml=False, save_dvc_exp=False, report=None)

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        super().__exit__(exc_type, exc_val, exc_tb)
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            for relative, data in self._previous.items():
                write_bytes(Path(self.dir) / relative, data)

    def make_summary(self) -> None:
        """Write the summary (the latest value of each metric, and ``step`` once there are steps) atomically."""
        if self._step is not None:
            self.summary["step"] = self.step
        write_json(self.metrics_file, self.summary)


@contextlib.contextmanager
def staged_live(plots_dir: str | os.PathLike, metrics_file: str | os.PathLike) -> Iterator[StageLive]:
    """A :class:`StageLive` in a temporary folder; at the end of the block its summary replaces
    ``metrics_file`` and its ``plots/`` the files of ``plots_dir``, all together (all_or_nothing).
    On an error nothing is written. Not for use inside an all_or_nothing block (it has its own)."""
    with tempfile.TemporaryDirectory(prefix="dvclive-") as staging:
        live = StageLive(staging)
        yield live
        live.make_summary()
        with all_or_nothing():
            write_bytes(metrics_file, Path(live.metrics_file).read_bytes())
            for path in sorted(Path(live.plots_dir).rglob("*")):
                if path.is_file():
                    write_bytes(Path(plots_dir) / path.relative_to(live.plots_dir), path.read_bytes())
