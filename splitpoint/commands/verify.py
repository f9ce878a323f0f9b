"""`splitpoint verify`: recompute every frozen backup's digest against its manifest, on the running server."""
from __future__ import annotations

import json
import sys

import click

from splitpoint.commands.trigger import CONTROL_HELP


def _backups(status: dict, lun_name: str | None, trigger_id: int | None) -> list[tuple[str, int, int]]:
    """(lun, trigger id, size) of every backup to verify."""
    out = []
    for lun in status.get("luns", []):
        if lun_name is not None and lun["name"] != lun_name:
            continue
        for b in lun.get("backups", []):
            if trigger_id is None or b["trigger_id"] == trigger_id:
                out.append((lun["name"], b["trigger_id"], lun["size"]))
    return sorted(out)


@click.command("verify")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--lun", "lun_name", default=None, help="Only this LUN's backups.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for one backup's verify.")
@click.argument("trigger_id", type=int, required=False)
def command(url, lun_name, as_json, timeout, trigger_id):
    """Recompute each consistent backup's digest (or only TRIGGER_ID's) against its manifest.

    The server does the hashing; this shows a progress bar on a terminal and one line per backup
    otherwise. Exits 1 when any backup does not match its manifest, naming the regions that differ.
    """
    from splitpoint.firmware.frontend.control import ControlClient, ControlError

    results = []
    try:
        with ControlClient(url, timeout) as client:
            status = client.status()
            if lun_name is not None and lun_name not in [lun["name"] for lun in status.get("luns", [])]:
                raise click.ClickException(f"no LUN named {lun_name!r} on the server")
            todo = _backups(status, lun_name, trigger_id)
            if not todo:
                raise click.ClickException("no such backup" if trigger_id is not None else "no backup to verify yet")

            def one(lun, tid):
                answer = client.ask(f"VERIFY {lun} {tid}")
                if answer.startswith("ERR"):   # e.g. recycled since STATUS: nothing left to check
                    return [{"trigger_id": tid, "member": "?", "ok": None, "note": answer[4:], "lun": lun}]
                return [dict(r, lun=lun) for r in json.loads(answer)]

            if sys.stdout.isatty() and not as_json:
                from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

                with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn()) as bars:
                    task = bars.add_task("verify", total=sum(size for *_, size in todo))
                    for lun, tid, size in todo:
                        bars.update(task, description=f"verify {lun}.t{tid}")
                        results += one(lun, tid)
                        bars.advance(task, size)
            else:
                for lun, tid, _size in todo:
                    results += one(lun, tid)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            verdict = "PENDING" if r.get("pending") else {True: "OK", False: "MISMATCH", None: "SKIPPED"}[r["ok"]]
            line = f"{r['lun']}.t{r['trigger_id']} ({r['member']}): {verdict}"
            if r.get("actual"):
                line += f" digest {r['actual']}"
            if r.get("bad_regions"):
                line += " differs at " + ", ".join(f"[{o}, +{n})" for o, n in r["bad_regions"][:8])
            if r.get("note"):
                line += f" ({r['note']})"
            click.echo(line)
    if any(r["ok"] is False for r in results):
        sys.exit(1)
