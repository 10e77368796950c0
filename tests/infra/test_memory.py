"""The memory a process may still use: the kernel's estimate, capped by an address-space limit."""

import subprocess
import sys

from mnist_classification.infra.memory import available_memory, format_bytes


def test_available_memory_is_positive_and_at_most_the_machine():
    with open("/proc/meminfo", encoding="ascii") as handle:
        total = int(next(line for line in handle if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < available_memory() <= total


def test_an_address_space_limit_caps_it():
    code = ("import resource, sys; from mnist_classification.infra.memory import available_memory; "
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY)); "
            "print(available_memory())")
    room = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < room < 3 << 30


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 23 * 2**20, 2.7 * 2**40)] == [
        "0 bytes", "1023 bytes", "1.5 KiB", "23.0 MiB", "2.7 TiB"]
