"""`splitpoint status`: what the running server reports on its control channel, as a table or JSON."""
from __future__ import annotations

import datetime
import json
import sys
import time

import click

from splitpoint.commands.trigger import CONTROL_HELP


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    return str(n)


def _when(t) -> str:
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")


def _member_state(m: dict) -> str:
    state = m.get("state", "?")
    resync = m.get("resync")
    if resync:
        eta = resync.get("eta")
        state += f" {resync.get('percent', 0):.1f}%" + (f" ETA {eta:.1f}s" if eta is not None else "")
    if m.get("digest_progress") is not None:
        state += f" (digest {m['digest_progress']:.0f}%)"
    elif m.get("consistent") and m.get("digest") is None:
        state += " (digest pending)"
    if m.get("error"):
        state += f" [{m['error']}]"
    if m.get("link_down"):
        state += " LINK DOWN"
    return state


def _device_line(dev: dict) -> str:
    """One board link: up or down, the host's retransmission counters, what its queue holds."""
    link = dev.get("link") or {}
    words = ["up" if link.get("up") else "down"]
    for counter in ("retransmits", "naks", "timeouts", "reconnects"):
        if link.get(counter):
            words.append(f"{link[counter]} {counter[:-1]}(s)")
    words.append(f"{link.get('outstanding', 0)}/{link.get('window', '?')} outstanding")
    queue = dev.get("queue")
    if queue:
        words.append(f"{queue.get('queued_ops', 0)} queued ({_size(queue.get('queued_bytes', 0))})")
        if queue.get("lag_seconds"):
            words.append(f"{queue['lag_seconds']:.1f} s behind")
        if queue.get("missed_triggers"):
            words.append(f"{len(queue['missed_triggers'])} TRIGGER(s) missed")
    if link.get("gone"):
        words.append(f"gone: {link['gone']}")
    return f"device {dev.get('device')} {dev.get('url')}: " + ", ".join(words)


def render(status: dict, console) -> None:
    """Print ``status`` (the STATUS JSON) as tables on a rich console."""
    from rich.table import Table

    for lun in status.get("luns", []):
        console.print(f"[bold]{lun.get('name')}[/bold]  {_size(lun.get('size', 0))}, block {lun.get('block_size')}, "
                      f"{lun.get('state', '?')}, epoch {lun.get('epoch')}, {lun.get('triggers', 0)} trigger(s)"
                      + (", read-only" if lun.get("read_only") else ""))
        for path in lun.get("paths", []):
            console.print(f"  mirror {path.get('from')} -> {path.get('to')}: {path.get('mode')}, "
                          f"queue {path.get('queue_depth', 0)}, forwarded {path.get('forwarded', 0)}"
                          + (f", {path['errors']} error(s)" if path.get("errors") else ""))
        node = lun.get("backup_lun")
        if node:
            missed = node.get("missed_cuts") or []
            console.print(f"  primary backup LUN {node.get('name')}: {node.get('state')}"
                          + (f", {len(missed)} cut(s) missed there" if missed else ""))
        for pool in lun.get("pools", []):
            title = f"pool {pool.get('name')} ({pool.get('state')}, {pool.get('rotations', 0)} rotation(s))"
            table = Table(title=title,
                          title_justify="left")
            for col in ("member", "role", "state", "export", "label", "seq", "cut at", "consistent"):
                table.add_column(col)
            for m in pool.get("members", []):
                tid = m.get("trigger_id")
                table.add_row(f"{pool.get('name')}[{m.get('index')}]", m.get("role", ""), _member_state(m),
                              (f"{lun.get('name')}.t{tid}" + (" (pinned)" if m.get("pinned") else ""))
                              if tid and m.get("consistent") else "",
                              m.get("label") or "", "" if m.get("seq") is None else str(m["seq"]),
                              _when(m.get("time")), "yes" if m.get("consistent") else "no")
            console.print(table)
        if lun.get("restoring"):
            console.print(f"  [bold]restoring[/bold] from {lun['restoring']}")
        if lun.get("restore_note"):
            console.print(f"  restore: {lun['restore_note']}")
        if lun.get("last_copy_warning"):
            console.print(f"  [bold]warning[/bold]: no consistent backup until the last cut completes "
                          f"({lun['last_copy_warning']})")
    queue = status.get("queue", {})
    counters = status.get("counters", {})
    console.print(f"queue {queue.get('depth', 0)}/{queue.get('capacity', '?')}, next seq {queue.get('next_seq')}; "
                  f"{counters.get('requests', 0)} requests, {counters.get('writes', 0)} writes, "
                  f"{counters.get('reads', 0)} reads, {counters.get('triggers', 0)} triggers, "
                  f"{counters.get('errors', 0)} errors")
    for dev in status.get("devices") or []:
        console.print(_device_line(dev))
    for fed in (status.get("device_links") or {}).get("luns", []):
        missed = fed.get("missed") or []
        console.print(f"link into {fed.get('lun')} from {fed.get('origin') or '?'} ({fed.get('peer')}): "
                      f"{'connected' if fed.get('connected') else 'disconnected'}, {fed.get('cuts', 0)} cut(s), "
                      f"{len(missed)} missed, {fed.get('replays', 0)} replayed")
    meta = status.get("metadata")
    if meta:
        console.print(f"metadata {meta.get('dir')}: generation {meta.get('generation')}, "
                      f"recovered {meta.get('recovered')}" + (f", ERROR {meta['error']}" if meta.get("error") else ""))


def _resyncs(status: dict) -> dict[str, dict]:
    out = {}
    for lun in status.get("luns", []):
        if lun.get("resync"):
            out[lun["name"]] = lun["resync"]
        node = lun.get("backup_lun")
        if node and node.get("resync"):
            out[node["name"]] = node["resync"]
        for pool in lun.get("pools", []):
            for m in pool["members"]:
                if m.get("resync"):
                    out[f"{pool['name']}[{m['index']}]"] = m["resync"]
    return out


def watch_resyncs(client, interval: float) -> None:
    """Follow every resync until none is left: progress bars on a terminal, plain lines otherwise."""
    status = client.status()
    if not _resyncs(status):
        click.echo("no resync running")
        return
    if sys.stdout.isatty():
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                      TimeRemainingColumn()) as bars:
            tasks = {}
            while True:
                running = _resyncs(status)
                for name, prog in running.items():
                    if name not in tasks:
                        tasks[name] = bars.add_task(f"resync {name}", total=100.0)
                    bars.update(tasks[name], completed=prog.get("percent", 0.0))
                for name, task in tasks.items():
                    if name not in running:
                        bars.update(task, completed=100.0)
                if not running:
                    return
                time.sleep(interval)
                status = client.status()
    while True:
        running = _resyncs(status)
        if not running:
            click.echo("all resyncs done")
            return
        for name, prog in running.items():
            eta = prog.get("eta")
            click.echo(f"resync {name}: {prog.get('percent', 0.0):.1f}%, {_size(prog.get('rate', 0))}/s"
                       + (f", ETA {eta:.1f}s" if eta is not None else ""))
        time.sleep(interval)
        status = client.status()


@click.command("status")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw STATUS JSON instead of tables.")
@click.option("--watch", is_flag=True, help="Follow running resyncs with progress bars until they finish.")
@click.option("--interval", default=0.5, show_default=True, help="Seconds between polls with --watch.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the server's answer.")
def command(url, as_json, watch, interval, timeout):
    """Show LUNs, mirror paths, pool members and backups of the running server.

    The server is found through its control channel (--control or $SPLITPOINT_CONTROL): the
    pty path `splitpoint serve` printed, its --control-link, or any pyserial URL.
    """
    from rich.console import Console

    from splitpoint.firmware.frontend.control import ControlClient, ControlError

    try:
        with ControlClient(url, timeout) as client:
            if watch:
                watch_resyncs(client, interval)
                return
            status = client.status()
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    # a pipe or a log gets wide plain tables rather than 80-column wrapping
    render(status, Console(highlight=False, width=None if sys.stdout.isatty() else 160))
