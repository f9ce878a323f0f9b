"""Real NBD clients against `splitpoint serve`: qemu-io, qemu-img, nbdinfo, nbdcopy, fio, nbdfuse.

Each client's own exit code is the oracle (qemu-io -P, qemu-img compare, fio verify, a mounted
file system). The server is a real child process on a Unix socket, stopped by pid with SIGTERM.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import exchange

pytestmark = pytest.mark.clients
MiB = 1 << 20
TOOLS = ("qemu-io", "qemu-img", "nbdinfo", "nbdcopy", "fio", "nbdfuse", "socat")


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make test installs them)")


def sh(*cmd, timeout=120, check=True, input=None):
    got = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, input=input)
    if check and got.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {got.returncode}:\n{got.stdout}\n{got.stderr}")
    return got


def qemu_io(uri, *commands, readonly=False, check=True):
    args = ["qemu-io", "-f", "raw"] + (["-r"] if readonly else [])
    for c in commands:
        args += ["-c", c]
    return sh(*args, uri, check=check)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(str(tmp_path_factory.mktemp("clients"))) as s:
        yield s
    assert s.returncode == 0, s.log()


def trigger(server, label="") -> int:
    answer = exchange(server.control, f"TRIGGER {label}".strip(), 30)
    assert answer.startswith("OK "), answer
    return int(answer.split()[1])


def latest_backup(server) -> dict:
    status = json.loads(exchange(server.control, "STATUS", 10))
    return max(status["luns"][0]["backups"], key=lambda b: b["trigger_id"])


@pytest.mark.parametrize("source", ["serial", "special-lun", "special-path"])
def test_qemu_io_patterns_then_trigger_on_each_source(server, source, tmp_path):
    need("qemu-io")
    off = {"serial": 16, "special-lun": 20, "special-path": 24}[source] * MiB
    before = latest_backup(server)["trigger_id"] if source != "serial" and _has_backups(server) else 0
    qemu_io(server.uri("lun0"), f"write -P 0x11 {off} 1M")
    if source == "serial":
        tid = trigger(server, "qemu-serial")
    elif source == "special-lun":
        label = tmp_path / "label"
        label.write_bytes(b"qemu-special-lun".ljust(512, b"\0"))
        qemu_io(server.uri("trigger"), f"write -s {label} 0 512")
        tid = latest_backup(server)["trigger_id"]
        assert tid > before and latest_backup(server)["label"] == "qemu-special-lun"
    else:
        # the write through the special path is itself in the backup: it precedes its TRIGGER
        qemu_io(server.uri("lun0.trigger"), f"write -P 0x33 {off + MiB} 64k")
        tid = latest_backup(server)["trigger_id"]
        assert tid > before
    qemu_io(server.uri("lun0"), f"write -P 0x22 {off} 1M")
    backup = server.uri(f"lun0.t{tid}")
    qemu_io(backup, f"read -P 0x11 {off} 1M", readonly=True)
    assert qemu_io(backup, f"read -P 0x22 {off} 1M", readonly=True, check=False).returncode != 0
    qemu_io(server.uri("lun0"), f"read -P 0x22 {off} 1M")
    if source == "special-path":
        qemu_io(backup, f"read -P 0x33 {off + MiB} 64k", readonly=True)
    qemu_io(server.uri("lun0.latest"), f"read -P 0x11 {off} 1M", readonly=True)
    assert qemu_io(backup, f"write -P 0x44 {off} 4k", check=False).returncode != 0   # read-only export


def _has_backups(server) -> bool:
    return bool(json.loads(exchange(server.control, "STATUS", 10))["luns"][0]["backups"])


def test_qemu_img_info_map_convert_compare(server, tmp_path):
    need("qemu-img", "qemu-io")
    info = json.loads(sh("qemu-img", "info", "-f", "raw", "--output=json", server.uri("lun0")).stdout)
    assert info["virtual-size"] == 256 * MiB
    qemu_io(server.uri("lun0"), f"write -P 0x5a {40 * MiB} 2M", f"write -z {42 * MiB} 1M")
    extents = json.loads(sh("qemu-img", "map", "-f", "raw", "--output=json", server.uri("lun0")).stdout)
    covering = [e for e in extents if e["start"] <= 40 * MiB < e["start"] + e["length"]]
    assert covering and covering[0]["data"] and not covering[0]["zero"]
    zeroed = [e for e in extents if e["start"] <= 42 * MiB < e["start"] + e["length"]]
    assert zeroed and zeroed[0]["zero"]
    tid = trigger(server, "qemu-img")
    local = tmp_path / "backup.img"
    sh("qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri(f"lun0.t{tid}"), local)
    assert os.path.getsize(local) == 256 * MiB
    sh("qemu-img", "compare", "-f", "raw", "-F", "raw", server.uri(f"lun0.t{tid}"), local)
    sh("qemu-img", "compare", "-f", "raw", "-F", "raw", server.uri("lun0"), server.uri(f"lun0.t{tid}"))
    qemu_io(server.uri("lun0"), f"write -P 0x5b {40 * MiB} 4k")
    differ = sh("qemu-img", "compare", "-f", "raw", "-F", "raw", server.uri("lun0"), local, check=False)
    assert differ.returncode == 1 and str(40 * MiB) in differ.stdout


def test_nbdinfo_size_list_map_multi_conn(server):
    need("nbdinfo", "qemu-io")
    assert sh("nbdinfo", "--size", server.uri("lun0")).stdout.strip() == str(256 * MiB)
    assert sh("nbdinfo", "--size", server.uri("trigger")).stdout.strip() == str(MiB)
    assert sh("nbdinfo", "--can", "multi-conn", server.uri("lun0"), check=False).returncode == 0
    assert sh("nbdinfo", "--can", "flush", server.uri("lun0"), check=False).returncode == 0
    qemu_io(server.uri("lun0"), f"write -P 0x01 {48 * MiB} 1M", f"write -z {49 * MiB} 1M")
    tid = trigger(server, "nbdinfo-label")
    assert sh("nbdinfo", "--can", "write", server.uri(f"lun0.t{tid}"), check=False).returncode != 0
    listing = sh("nbdinfo", "--list", "--json", server.uri("")).stdout
    exports = {e["export-name"]: e for e in json.loads(listing)["exports"]}
    for name in ("lun0", "lun0.trigger", "trigger", "lun0.latest", f"lun0.t{tid}"):
        assert name in exports, name
    description = exports[f"lun0.t{tid}"]["description"]
    assert "nbdinfo-label" in description and "seq" in description and "time" in description
    assert exports[f"lun0.t{tid}"]["is_read_only"] is True
    mapped = json.loads(sh("nbdinfo", "--map", "--json", server.uri("lun0")).stdout)
    by_offset = {e["offset"]: e for e in mapped}
    data = [e for e in mapped if e["offset"] <= 48 * MiB < e["offset"] + e["length"]]
    assert data and data[0]["type"] == 0
    zero = [e for e in mapped if e["offset"] <= 49 * MiB < e["offset"] + e["length"]]
    assert zero and zero[0]["type"] & 2
    assert by_offset  # extents cover the export from offset 0
    assert min(by_offset) == 0


def test_nbdcopy_round_trip_with_flush_over_several_connections(server, tmp_path):
    need("nbdcopy")
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(24 * MiB) + bytes(8 * MiB))
    sh("nbdcopy", "--flush", "--connections=4", "--requests=16", src, server.uri("lun0"))
    back = tmp_path / "back.img"
    sh("nbdcopy", "--connections=4", server.uri("lun0"), back)
    assert os.path.getsize(back) == 256 * MiB
    with open(src, "rb") as a, open(back, "rb") as b:
        assert a.read() == b.read(32 * MiB)
    tid = trigger(server, "after-nbdcopy")
    frozen = tmp_path / "frozen.img"
    sh("nbdcopy", "--connections=4", server.uri(f"lun0.t{tid}"), frozen)
    with open(src, "rb") as a, open(frozen, "rb") as b:
        assert a.read() == b.read(32 * MiB)


def test_fio_verify_before_and_after_trigger(server):
    need("fio")
    common = ["--name=job", "--ioengine=nbd", "--rw=write", "--bs=64k", f"--offset={64 * MiB}",
              f"--size={16 * MiB}", "--verify=pattern", "--verify_state_save=0", "--output-format=terse"]
    sh("fio", *common, f"--uri={server.uri('lun0')}", "--verify_pattern=0x11223344", "--do_verify=0")
    tid = trigger(server, "fio")
    sh("fio", *common, f"--uri={server.uri('lun0')}", "--verify_pattern=0x55667788", "--iodepth=8",
       "--rw=randwrite", "--do_verify=0")
    backup = f"--uri={server.uri(f'lun0.t{tid}')}"
    sh("fio", *common, backup, "--verify_pattern=0x11223344", "--verify_only")
    second = sh("fio", *common, backup, "--verify_pattern=0x55667788", "--verify_only", check=False)
    assert second.returncode != 0 and "verify failed" in second.stderr
    sh("fio", *common, f"--uri={server.uri('lun0')}", "--verify_pattern=0x55667788", "--verify_only")


def _fuse_unavailable() -> str | None:
    if shutil.which("nbdfuse") is None or shutil.which("fusermount3") is None:
        return "nbdfuse/fusermount3 not installed"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist in this environment"
    if os.geteuid() != 0:
        return "loop mounts need root"
    return None


def _mounted(path) -> bool:
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == str(path) for line in fh)


def _wait_for(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def _unmount_all(mounts, fuse_dirs, procs):
    for m in mounts:
        if _mounted(m):
            subprocess.run(["umount", str(m)], capture_output=True)
            if _mounted(m):
                subprocess.run(["umount", "-l", str(m)], capture_output=True)
    for d in fuse_dirs:
        if _mounted(d):
            subprocess.run(["fusermount3", "-u", str(d)], capture_output=True)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()


def test_nbdfuse_ext4_backup_holds_exactly_the_files_synced_before_the_cut(server, tmp_path):
    why = _fuse_unavailable()
    if why:
        pytest.skip(f"FUSE is unavailable here: {why}")
    need("mkfs.ext4")
    fuse_rw, fuse_ro, mnt, mnt_ro = (tmp_path / n for n in ("fuse_rw", "fuse_ro", "mnt", "mnt_ro"))
    for d in (fuse_rw, fuse_ro, mnt, mnt_ro):
        d.mkdir()
    procs = []
    try:
        procs.append(subprocess.Popen(["nbdfuse", str(fuse_rw / "disk"), server.uri("lun0")]))
        _wait_for(fuse_rw / "disk")
        # no journal: whatever `sync` wrote is in place, so a crash-consistent cut mounts as is
        sh("mkfs.ext4", "-q", "-F", "-O", "^has_journal", fuse_rw / "disk")
        got = sh("mount", "-o", "loop", fuse_rw / "disk", mnt, check=False)
        if got.returncode != 0:
            pytest.skip(f"FUSE is unavailable here: cannot loop-mount a FUSE file ({got.stderr.strip()})")
        (mnt / "before.txt").write_text("synced before the cut\n")
        os.makedirs(mnt / "dir")
        (mnt / "dir" / "data.bin").write_bytes(bytes(range(256)) * 1024)
        sh("sync")
        tid = trigger(server, "ext4")
        (mnt / "after.txt").write_text("written after the cut\n")
        sh("sync")
        procs.append(subprocess.Popen(["nbdfuse", "-r", str(fuse_ro / "disk"), server.uri(f"lun0.t{tid}")]))
        _wait_for(fuse_ro / "disk")
        sh("mount", "-o", "loop,ro", fuse_ro / "disk", mnt_ro)
        assert sorted(os.listdir(mnt_ro)) == ["before.txt", "dir", "lost+found"]
        assert (mnt_ro / "before.txt").read_text() == "synced before the cut\n"
        assert (mnt_ro / "dir" / "data.bin").read_bytes() == bytes(range(256)) * 1024
        assert (mnt / "after.txt").exists()
    finally:
        _unmount_all([mnt_ro, mnt], [fuse_ro, fuse_rw], procs)


def test_nbdfuse_ext4_restored_from_a_backup_mounts_and_holds_the_files_of_the_cut(server, tmp_path):
    """The storage engineer's restore: a file system is cut, then damaged (files deleted, rewritten,
    added), unmounted, RESTOREd from the cut, and mounts again holding exactly the cut's files."""
    why = _fuse_unavailable()
    if why:
        pytest.skip(f"FUSE is unavailable here: {why}")
    need("mkfs.ext4", "e2fsck")
    fuse, mnt = tmp_path / "fuse", tmp_path / "mnt"
    fuse.mkdir()
    mnt.mkdir()
    disk = fuse / "disk"
    procs: list = []

    def attach():
        # a fresh nbdfuse each time, so no page cache of the FUSE file outlives the restore
        procs.append(subprocess.Popen(["nbdfuse", str(disk), server.uri("lun0")]))
        _wait_for(disk)

    def detach():
        _unmount_all([mnt], [fuse], procs)

    payload = bytes(range(251)) * 4096
    try:
        attach()
        sh("mkfs.ext4", "-q", "-F", "-O", "^has_journal", disk)
        got = sh("mount", "-o", "loop", disk, mnt, check=False)
        if got.returncode != 0:
            pytest.skip(f"FUSE is unavailable here: cannot loop-mount a FUSE file ({got.stderr.strip()})")
        (mnt / "keep.txt").write_text("the file of the cut\n")
        os.makedirs(mnt / "dir")
        (mnt / "dir" / "data.bin").write_bytes(payload)
        sh("sync")
        tid = trigger(server, "ext4-restore")
        (mnt / "keep.txt").unlink()
        (mnt / "dir" / "data.bin").write_bytes(b"\xee" * len(payload))
        (mnt / "after.txt").write_text("written after the cut\n")
        sh("sync")
        detach()

        answer = exchange(server.control, f"RESTORE lun0.t{tid}", 60)
        assert answer.startswith("OK restore lun0 seq="), answer
        # the LUN now equals the backup byte for byte, and the file system on it is clean
        same = sh("qemu-img", "compare", "-f", "raw", "-F", "raw", server.uri("lun0"), server.uri(f"lun0.t{tid}"),
                  check=False)
        assert same.returncode == 0, same.stdout + same.stderr

        attach()
        sh("e2fsck", "-f", "-n", disk)
        sh("mount", "-o", "loop", disk, mnt)
        assert sorted(os.listdir(mnt)) == ["dir", "keep.txt", "lost+found"]
        assert (mnt / "keep.txt").read_text() == "the file of the cut\n"
        assert (mnt / "dir" / "data.bin").read_bytes() == payload
    finally:
        detach()


def test_garbage_and_unknown_exports_leave_other_clients_unaffected(server):
    need("socat", "nbdinfo", "qemu-io")
    for garbage in (b"\xff" * 100, b"\0\0\0\0" + b"IHAVEOPT" + b"\x12" * 40, b""):
        sh("socat", "-t", "1", "-", f"UNIX-CONNECT:{server.socket}", input=garbage.decode("latin-1"), check=False)
    missing = sh("nbdinfo", server.uri("no.such.export"), check=False)
    assert missing.returncode != 0
    qemu_io(server.uri("lun0"), f"write -P 0x7e {60 * MiB} 64k")
    qemu_io(server.uri("lun0"), f"read -P 0x7e {60 * MiB} 64k")
