"""tqdm progress bars: redrawn in place on a terminal, one line per bar in logs."""

import io

from mnist_classification.infra.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_final_line_per_bar():
    log = io.StringIO()
    for epoch in (1, 2):
        bar = ProgressBar(f"epoch {epoch}/2", 50, stream=log, unit="batch")
        for step in range(50):
            bar.update(step + 1, loss=0.5)
        bar.close(loss=0.25, acc=0.9)
    lines = log.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3, log.getvalue()
    assert [line.lstrip("\r").split(":")[0] for line in lines[:2]] == ["epoch 1/2", "epoch 2/2"]
    assert all(line.count("\r") == 1 and "50/50" in line and "loss=0.2500, acc=0.9000" in line for line in lines[:2])


def test_a_terminal_sees_the_bar_move():
    screen = Terminal()
    bar = ProgressBar("epoch 1/1", 1000, stream=screen)
    bar._bar.mininterval = 0  # redraw at every update, as a slow loop would
    for step in range(1000):
        bar.update(step + 1)
    bar.close()
    assert screen.getvalue().count("\r") > 10 and "1000/1000" in screen.getvalue()


def test_cleared_bar_leaves_nothing_in_a_log_and_unknown_totals_work():
    log = io.StringIO()
    bar = ProgressBar("  file.gz", 0, stream=log, unit="B")
    bar.update(5000)
    bar.total = 10_000
    bar.update(10_000)
    bar.clear()
    assert log.getvalue() == ""


def test_a_bar_half_built_by_an_interrupt_is_destroyed_silently(capsys):
    from mnist_classification.infra.progress import _Tqdm

    half_built = _Tqdm.__new__(_Tqdm)  # what Ctrl-C inside tqdm.__init__ leaves for the garbage collector:
    half_built.disable = False  # set early in __init__, before ``pos`` (plain tqdm raises AttributeError)
    half_built.__del__()
    assert capsys.readouterr().err == ""
