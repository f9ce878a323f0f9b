"""A bounded run of the firmware core's fuzzer (boards/firmware/host/fuzz.c) under AddressSanitizer and
UBSan: mutated frames, noise, control lines and medium failures; no crash, no sanitizer report, every
reply a valid frame and every control answer one line. `make fuzz` runs a longer one."""
import os
import re
import shutil
import subprocess

import pytest

HOST = os.path.join(os.path.dirname(__file__), "..", "boards", "firmware", "host")


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None, reason="no make or C compiler")
def test_fuzzer_finds_nothing_in_a_bounded_run(tmp_path):
    out = subprocess.run(["make", "-s", "-C", HOST, "fuzz", f"BUILD={tmp_path}", "FUZZ_RUNS=150000", "FUZZ_SEED=7"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    counts = dict(re.findall(r"(\w+) (\d+)", out.stdout.splitlines()[-1]))
    assert counts["executions"] == "150000" and counts["broken"] == "0"
    # the run reached every layer: frames accepted and rejected, replies, control answers and cuts
    assert all(int(counts[k]) > 100 for k in ("frames", "rejected", "replies", "control", "triggers")), counts
