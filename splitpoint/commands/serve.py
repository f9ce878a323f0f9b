"""`splitpoint serve`: run the controller with its NBD exports and its serial control channel."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys

import click


def _banner(ctl, service) -> list[str]:
    lines = []
    for name, lun in ctl.luns.items():
        lines.append(f"LUN {name}: {lun.size} bytes, block {lun.block_size}")
    for endpoint in service.endpoints:
        if endpoint.startswith(("link://", "link+tls://")):
            lines.append(f"device links: {endpoint}/<lun>")
        else:
            lines.append(f"NBD: {endpoint}")
    tls = service.frontend.tls
    if tls.enabled:
        lines.append(f"TLS: {tls.mode} (NBD_OPT_STARTTLS; nbds:// URIs), certificates {tls.certificates}"
                     + (", client certificates verified" if tls.verify_peer else ""))
    lines.append("exports: " + ", ".join(n for n, _ in service.frontend.exports.listing()) + ", <lun>.t<id> once cut")
    channel = service.control
    if channel is not None:
        where = channel.path
        if getattr(channel, "link", None):
            where += f" (linked at {channel.link})"
        lines.append(f"control: {where}")
    lines.append("ready (SIGINT or SIGTERM stops cleanly)")
    return lines


async def _serve(ctl, listen, socket_path, control_url, control_link, nbd, tls, device_listen=None, device_tls=None):
    from splitpoint.firmware.frontend.service import Service

    service = await Service.start(ctl, listen=listen, socket_path=socket_path,
                                  control_url=control_url, control_link=control_link,
                                  handshake_timeout=nbd.handshake_timeout, client_bytes=nbd.client_inflight,
                                  total_bytes=nbd.total_inflight, tls=tls, device_listen=device_listen,
                                  device_tls=device_tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for line in _banner(ctl, service):
        click.echo(line)
    sys.stdout.flush()
    await stop.wait()
    click.echo("stopping: answering requests in flight, draining the queue, persisting metadata")
    await service.stop()
    click.echo("stopped")


def _tls_settings(nbd, mode, directory, verify_peer):
    """The command line's TLS flags over the configuration's [nbd] tls keys; checked (the files too) now."""
    from splitpoint.firmware.frontend.nbd.tls import TlsSettings, server_context

    settings = TlsSettings(mode=mode or nbd.tls, certificates=directory or nbd.tls_certificates,
                           verify_peer=nbd.tls_verify_peer if verify_peer is None else verify_peer)
    server_context(settings)
    return settings


def _device_tls(device):
    """The device link listener's TLS context ([device] tls_certificates: every link must speak TLS), or None."""
    from splitpoint.hal.tls import server_context

    if not device.tls_certificates:
        return None
    return server_context(device.tls_certificates, device.tls_verify_peer)


def _keep_large_buffers_on_the_heap():
    """glibc: serve 256 KiB-64 MiB payloads from the heap instead of a fresh mmap each time.

    Every large READ reply and WRITE payload is a new buffer; by default glibc maps each one
    and unmaps it when freed, so the kernel zeroes and faults in every page again. That cost
    more than the copy itself (≈200 µs of CPU per 256 KiB read instead of ≈65 µs).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD: the largest glibc allows
        libc.mallopt(-1, 256 << 20)   # M_TRIM_THRESHOLD: keep freed memory for the next request
    except (OSError, AttributeError):
        pass


def _run_loop(main):
    """Run ``main`` on uvloop when it is installed (less loop overhead per request), else asyncio's loop.

    SPLITPOINT_LOOP=asyncio forces the standard loop.
    """
    if os.environ.get("SPLITPOINT_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration (LUNs, backends, pools); without it, the embedded default: "
                   "RAM lun0 of 256 MiB mirrored to a pool of 3 RAM backups.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="NBD on TCP (default 127.0.0.1:10809 unless --socket is given; port 0 picks a free one).")
@click.option("--socket", "socket_path", default=None, type=click.Path(dir_okay=False),
              help="NBD on a Unix socket at PATH.")
@click.option("--control-link", default=None, type=click.Path(dir_okay=False),
              help="Also make PATH a symlink to the new control pty.")
@click.option("--control", "control_url", default=None, metavar="URL",
              help="Use this pyserial URL or device as the control channel instead of a new pty.")
@click.option("--handshake-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Close an NBD connection whose handshake has not finished after SECONDS "
                   "(default 10, or [nbd] handshake_timeout; 0: no limit).")
@click.option("--tls", "tls_mode", type=click.Choice(["off", "on", "require"]), default=None,
              help="TLS for NBD clients, as nbdkit's --tls: on lets a client start TLS (NBD_OPT_STARTTLS, "
                   "nbds:// URIs), require refuses every client that does not (default off, or [nbd] tls).")
@click.option("--tls-certificates", "tls_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Directory with server-cert.pem and server-key.pem (and ca-cert.pem for --tls-verify-peer).")
@click.option("--tls-verify-peer", is_flag=True, default=None,
              help="Accept only clients presenting a certificate signed by DIR/ca-cert.pem.")
@click.option("--device-listen", default=None, metavar="HOST:PORT",
              help="Take device links on TCP: another controller feeds a LUN here as link://HOST:PORT/LUN "
                   "(its writes and TRIGGERs in sequence; this LUN's pool rotates). Or [device] listen.")
@click.option("-v", "--verbose", count=True, help="Log more (-v: connections, -vv: every error reply).")
def command(config_path, listen, socket_path, control_link, control_url, handshake_timeout, tls_mode, tls_dir,
            tls_verify_peer, device_listen, verbose):
    """Serve LUNs over NBD with a TRIGGER control channel, until SIGINT or SIGTERM.

    \b
    Exports: lun0 (also ""), lun0.trigger (special path), trigger (special LUN),
             lun0.latest and lun0.t<id> (read-only frozen backups).
    Control channel, one line each way:
             TRIGGER [ON name] [label] -> OK <id> seq=<n>;  STATUS -> JSON;  PING -> PONG
    TLS:     --tls=on|require --tls-certificates DIR (server-cert.pem, server-key.pem);
             clients use nbds:// URIs.
    """
    from splitpoint import config
    from splitpoint.firmware.controller import Controller
    from splitpoint.firmware.frontend.service import parse_listen

    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="splitpoint: %(name)s: %(message)s", stream=sys.stderr)
    try:
        address = parse_listen(listen) if listen else (None if socket_path else ("127.0.0.1", 10809))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    try:
        cfg = config.load(config_path) if config_path else config.default()
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        device_address = config.parse_host_port(device_listen or cfg.device.listen) \
            if (device_listen or cfg.device.listen) else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device-listen") from None
    try:
        ctl = Controller.from_config(cfg)
    except Exception as exc:  # a backend that cannot open, metadata from another config...
        raise click.ClickException(f"cannot start the controller: {exc}") from None
    nbd = cfg.nbd
    if handshake_timeout is not None:
        nbd = dataclasses.replace(nbd, handshake_timeout=handshake_timeout)
    try:
        tls = _tls_settings(nbd, tls_mode, tls_dir, tls_verify_peer)
        device_tls = _device_tls(cfg.device)
    except ValueError as exc:
        ctl.close()
        raise click.UsageError(str(exc)) from None
    _keep_large_buffers_on_the_heap()
    try:
        _run_loop(_serve(ctl, address, socket_path, control_url, control_link, nbd, tls, device_address, device_tls))
    except OSError as exc:
        ctl.close()
        raise click.ClickException(f"cannot serve: {exc}") from None
    except Exception as exc:
        ctl.close()
        raise click.ClickException(str(exc)) from None
