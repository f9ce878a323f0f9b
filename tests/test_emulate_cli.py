"""`splitpoint emulate` refuses bad flags with one line and a non-zero exit (real processes)."""
import subprocess
import sys

import pytest


def emulate(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "splitpoint", "emulate", "emu-usb-fs", "--link",
                           str(tmp_path / "link"), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("spec", ["error=1%", "drop=1%,error=1%"])
def test_a_device_only_fault_on_the_link_is_refused_in_one_line(tmp_path, spec):
    got = emulate(tmp_path, "--faults", spec)
    assert got.returncode != 0
    assert "Traceback" not in got.stderr, got.stderr
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, got.stderr
    assert "'error' acts on devices, not on a link" in lines[0] and "drop" in lines[0]
    assert not (tmp_path / "link").exists()


@pytest.mark.parametrize("rate", ["-5", "-1"])
def test_a_negative_rate_is_refused_in_one_line(tmp_path, rate):
    got = emulate(tmp_path, "--rate", rate)
    assert got.returncode != 0
    assert "Traceback" not in got.stderr, got.stderr
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--rate" in lines[0] and rate in lines[0], got.stderr
    assert not (tmp_path / "link").exists()
