import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Like a forward pass: allocates twelve 8 MiB tensors, frees them all, and again ten times;
# prints the minor page faults of the last ten rounds.
FAULTS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from device import keep_freed_memory
if {keep}:
    keep_freed_memory()
torch.set_num_threads(1)
def allocate_and_free():
    tensors = [torch.ones(2 * 2**20) for _ in range(12)]
allocate_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    allocate_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: bool) -> int:
    code = FAULTS.format(root=str(ROOT), keep=keep)
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_freed_memory_is_reused_without_new_page_faults():
    default, kept = page_faults(keep=False), page_faults(keep=True)
    one_round = 12 * 8 * 2**20 // 4096  # pages of 4 KiB
    assert kept < one_round < default  # reused, against faulted afresh (at least once more)
