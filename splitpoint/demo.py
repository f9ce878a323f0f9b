"""The demo of `make demo`, and ``ServerProcess``: `splitpoint serve` run as a real child process.

``ServerProcess`` starts ``python -m splitpoint serve`` in a work directory, waits for its
``ready`` line, knows its NBD endpoint and control channel, and stops it by pid (SIGTERM, then
SIGKILL only if it does not exit). The demo, the real-client tests and the benchmarks use it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


class ServerError(RuntimeError):
    """`splitpoint serve` did not start, or did not stop cleanly."""


class ServerProcess:
    """``splitpoint serve`` as a child process, on a Unix socket (default) or TCP."""

    def __init__(self, workdir: str, *, config: str | None = None, tcp: str | None = None, unix: bool = True,
                 extra_args=(), cpu: int | None = None, env: dict | None = None):
        self.workdir = workdir
        self.config = config
        self.tcp = tcp
        self.unix = unix
        self.extra_args = list(extra_args)
        self.cpu = cpu
        self.env = env
        self.socket = os.path.join(workdir, "nbd.sock") if unix else None
        self.control = os.path.join(workdir, "control")
        self.endpoints: list[str] = []
        self.output: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "splitpoint", "serve", "--control-link", self.control]
        if self.config:
            cmd += ["--config", self.config]
        if self.socket:
            cmd += ["--socket", self.socket]
        if self.tcp:
            cmd += ["--listen", self.tcp]
        cmd += self.extra_args
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu)] + cmd
        return cmd

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        os.makedirs(self.workdir, exist_ok=True)
        self._stderr = open(os.path.join(self.workdir, "serve.log"), "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.output.append(line)
                if line.startswith("NBD: "):
                    self.endpoints.append(line[5:])
                if line.startswith("ready"):
                    ready.set()
            ready.set()
        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop(timeout=5)   # closes the log file: log() reads it back from disk
            raise ServerError(f"splitpoint serve did not start: {self.log()[-2000:]}")
        return self

    def log(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        with open(os.path.join(self.workdir, "serve.log")) as fh:
            return "\n".join(self.output) + "\n" + fh.read()

    def uri(self, export: str = "lun0") -> str:
        """An NBD URI of ``export`` that qemu, libnbd and fio all take."""
        if self.socket:
            return f"nbd+unix:///{export}?socket={self.socket}"
        tcp = next(e for e in self.endpoints if e.startswith("nbd://"))
        return f"{tcp}/{export}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server and wait; SIGKILL after ``timeout``. Returns its exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._stderr.close()
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------------------------------
# the demo of `make demo`

#: the workload writes inside this region of lun0; the special path writes above it
WORKLOAD_REGION = 32 << 20
PATH_REGION = 48 << 20
PATH_WRITE = 64 << 10
SOURCES = ("serial", "special LUN", "special path")
REQUIRED_TOOLS = {"qemu-io": "qemu-utils", "qemu-img": "qemu-utils", "nbdcopy": "libnbd-bin"}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


class _Workload:
    """qemu-io at queue depth 1 writing patterns into lun0, every write's send and ack time recorded."""

    def __init__(self, uri: str, seed: int = 2024):
        import random

        self.rng = random.Random(seed)
        self.writes: list[tuple[int, int, int]] = []   # (offset, length, pattern byte), in issue order
        self.sent: list[float] = []
        self.acked: list[float] = []
        self.proc = subprocess.Popen(["qemu-io", "-f", "raw", uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self):
        try:
            while not self.stop.is_set():
                length = self.rng.randrange(1, 33) * 4096
                offset = self.rng.randrange(0, (WORKLOAD_REGION - length) // 4096 + 1) * 4096
                pattern = len(self.writes) % 251 + 1
                self.writes.append((offset, length, pattern))
                self.sent.append(time.monotonic())
                self.proc.stdin.write(f"write -P {pattern} {offset} {length}\n")
                self.proc.stdin.flush()
                while True:
                    line = self.proc.stdout.readline()
                    if not line:
                        raise DemoError("qemu-io exited during the workload")
                    if "wrote " in line:
                        break
                    if "rror" in line or "failed" in line:
                        raise DemoError(f"qemu-io: {line.strip()}")
                self.acked.append(time.monotonic())
        except (DemoError, OSError) as exc:
            self.error = str(exc)
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait(timeout=30)


def _run(cmd, what: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    got = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if got.returncode != 0:
        raise DemoError(f"{what} failed (exit {got.returncode}): {(got.stderr or got.stdout).strip()[-500:]}")
    return got


def _fire(server: ServerProcess, source: str, n: int, workdir: str) -> dict:
    """Fire TRIGGER number ``n`` through ``source``; return what the demo needs to check it."""
    from splitpoint.firmware.frontend.control import ControlClient

    label = f"demo-{n}-{source.replace(' ', '-')}"
    fired = {"source": source, "label": label, "path_write": None, "sent": time.monotonic()}
    if source == "serial":
        got = _run([sys.executable, "-m", "splitpoint", "trigger", "--control", server.control, label],
                   "splitpoint trigger")
        fired["reply"] = got.stdout.strip()
    elif source == "special LUN":
        label_file = os.path.join(workdir, f"label{n}")
        with open(label_file, "wb") as fh:
            fh.write(label.encode().ljust(512, b"\0"))
        _run(["qemu-io", "-f", "raw", "-c", f"write -s {label_file} 0 512", server.uri("trigger")],
             "qemu-io write to the special LUN")
    else:
        offset = PATH_REGION + n * PATH_WRITE
        pattern = 0x80 + n % 100
        _run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern} {offset} {PATH_WRITE}", server.uri("lun0.trigger")],
             "qemu-io write through the special path")
        fired["path_write"] = (offset, PATH_WRITE, pattern)
        fired["label"] = ""
    fired["acked"] = time.monotonic()
    with ControlClient(server.control, 10) as control:
        backups = control.status()["luns"][0]["backups"]
    newest = max(backups, key=lambda b: b["trigger_id"])
    fired.update(id=newest["trigger_id"], seq=newest["seq"], got_label=newest["label"])
    # keep a copy now: the pool of 3 recycles this backup two TRIGGERs later
    fired["copy"] = os.path.join(workdir, f"t{fired['id']}.img")
    _run(["nbdcopy", server.uri(f"lun0.t{fired['id']}"), fired["copy"]], f"nbdcopy of lun0.t{fired['id']}")
    return fired


def _apply(model: bytearray, write) -> None:
    offset, length, pattern = write
    model[offset:offset + length] = bytes([pattern]) * length


def _reference_image(path: str, size: int, model: bytes, path_writes) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.write(model)
        for offset, length, pattern in path_writes:
            fh.seek(offset)
            fh.write(bytes([pattern]) * length)


def run(workdir: str, triggers: int = 6, interval: float = 0.4, echo=print) -> bool:
    """The demo; returns True when every backup proved to be its exact point-in-time copy."""
    import shutil

    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise DemoError("missing: " + ", ".join(missing) + "; `make demo` installs them")
    size = 256 << 20
    server = ServerProcess(os.path.join(workdir, "server")).start()
    workload = None
    thread = None
    fired: list[dict] = []
    try:
        echo(f"splitpoint serve (pid {server.pid}): embedded default, lun0 of 256 MiB mirrored to a pool of 3")
        echo(f"  NBD {server.uri('lun0')}   control channel {os.readlink(server.control)}")
        workload = _Workload(server.uri("lun0"))
        thread = threading.Thread(target=workload.run, name="demo-workload", daemon=True)
        started = time.monotonic()
        thread.start()
        time.sleep(interval)
        for n in range(1, triggers + 1):
            if workload.error:
                raise DemoError(workload.error)
            fired.append(_fire(server, SOURCES[(n - 1) % len(SOURCES)], n, workdir))
            time.sleep(interval)
        workload.stop.set()
        thread.join(timeout=60)
        if workload.error:
            raise DemoError(workload.error)
        elapsed = time.monotonic() - started
        writes = workload.writes[:len(workload.acked)]
        echo(f"workload: qemu-io wrote {len(writes)} patterns (4-128 KiB, queue depth 1) over {elapsed:.1f} s "
             f"while {triggers} TRIGGERs were fired through the serial channel, the special LUN and the special path")
        echo("")
        ok = _check(server, workload, fired, writes, size, workdir, echo)
        verify = subprocess.run([sys.executable, "-m", "splitpoint", "verify", "--control", server.control],
                                capture_output=True, text=True, timeout=300)
        echo(f"splitpoint verify (manifest digests of the backups still held): "
             f"{'OK' if verify.returncode == 0 else 'FAILED'}")
        for line in verify.stdout.splitlines():
            echo(f"  {line}")
        ok = ok and verify.returncode == 0
    finally:
        if workload is not None:
            workload.stop.set()
            if thread is not None:
                thread.join(timeout=60)
            if workload.proc.poll() is None:
                workload.proc.kill()
                workload.proc.wait()
        code = server.stop()
    left = [what for what, proc in (("server", server.proc), ("qemu-io", workload and workload.proc))
            if proc is not None and proc.poll() is None]
    echo(f"server stopped with SIGTERM: exit {code} (queue drained, metadata persisted); "
         + (f"STILL RUNNING: {', '.join(left)}" if left else "no process left"))
    return ok and code == 0 and not left


def _check(server, workload, fired, writes, size, workdir, echo) -> bool:
    """Find, for each backup, the prefix of the write stream it holds, and prove it byte for byte."""
    acked, sent = workload.acked, workload.sent
    model = bytearray(WORKLOAD_REGION)
    position = 0
    path_writes = []
    all_ok = True
    echo(f"{'backup':8} {'source':13} {'label':24} {'seq':>7}  {'cut after write':24} proof")
    for f in fired:
        if f["path_write"] is not None:
            path_writes.append(f["path_write"])
        lo = sum(1 for t in acked if t < f["sent"])
        hi = min(sum(1 for t in sent if t < f["acked"]), len(writes))
        with open(f["copy"], "rb") as fh:
            held = fh.read(WORKLOAD_REGION)
        if lo < position:
            model, position = bytearray(WORKLOAD_REGION), 0
        while position < lo:
            _apply(model, writes[position])
            position += 1
        cut = None
        while True:
            if model == held:
                cut = position
                break
            if position >= hi:
                break
            _apply(model, writes[position])
            position += 1
        name = f"lun0.t{f['id']}"
        if cut is None:
            echo(f"{name:8} {f['source']:13} {f['got_label'] or '-':24} {f['seq']:>7}  NOT a prefix of writes "
                 f"{lo}..{hi}: FAILED")
            all_ok = False
            continue
        ref = os.path.join(workdir, f"ref{f['id']}.img")
        _reference_image(ref, size, bytes(model), path_writes)
        proof = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", ref, f["copy"]],
                               capture_output=True, text=True)
        held_now = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", ref,
                                   server.uri(name)], capture_output=True, text=True)
        label_ok = f["got_label"] == f["label"]
        good = proof.returncode == 0 and label_ok
        where = "copy and live export identical" if held_now.returncode == 0 else "copy identical"
        if held_now.returncode == 1:   # the live export exists and differs: a real failure
            good, where = False, "live export DIFFERS"
        window = f"#{cut} (window {lo}..{hi})"
        echo(f"{name:8} {f['source']:13} {f['got_label'] or '-':24} {f['seq']:>7}  {window:24} "
             f"qemu-img compare: {where if proof.returncode == 0 else 'DIFFERS'}"
             f"{'' if label_ok else ' (label wrong)'}  {'OK' if good else 'FAILED'}")
        all_ok = all_ok and good
        os.unlink(ref)
    final = bytearray(WORKLOAD_REGION)
    for w in writes:
        _apply(final, w)
    ref = os.path.join(workdir, "lun0-final.img")
    _reference_image(ref, size, bytes(final), path_writes)
    primary = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", ref, server.uri("lun0")],
                             capture_output=True, text=True)
    echo(f"lun0 now holds all {len(writes)} writes and {len(path_writes)} special-path writes: "
         f"{'qemu-img compare identical, OK' if primary.returncode == 0 else 'DIFFERS, FAILED'}")
    return all_ok and primary.returncode == 0
