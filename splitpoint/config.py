"""Configuration: a TOML file (or the embedded default) checked key by key.

Owns the schema of ``splitpoint serve --config FILE``: LUNs and their
backends by URL, the pool each LUN (or its primary backup LUN) feeds, mirror
modes, chunk size, resync throttle and the metadata directory. Every key is
checked; an unknown key is an error that names it and lists the valid ones.
It never opens a device (it only stats image files, to refuse two keys that
name one device): the controller does that from the validated ``Config``. Documented with examples in docs/configuration.md.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from splitpoint.hal.url import parse_size

#: the embedded default (docs/configuration.md): RAM lun0 (256 MiB) mirrored to a pool of 3 RAM backups
DEFAULT_TOML = """\
[[lun]]
name = "lun0"
url = "ram://lun0?size=256M"

[lun.pool]
mirror = "sync"
members = ["ram://lun0.b0?size=256M", "ram://lun0.b1?size=256M", "ram://lun0.b2?size=256M"]
"""

MIRROR_MODES = ("sync", "async")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


class ConfigError(ValueError):
    """The configuration is not valid; the message names the key and what is allowed."""


@dataclass(frozen=True)
class ResyncConfig:
    """How fast a recycled pool member is brought back in sync."""

    rate: int = 0             # bytes per second at most (0 = no rate limit)
    deadline: float = 0.0     # seconds a resync should take at most, paced against foreground load (0 = none)
    slice: int = 4 << 20      # bytes copied per background step at most


@dataclass(frozen=True)
class NbdConfig:
    """What the NBD front end allows its clients (``splitpoint serve``)."""

    handshake_timeout: float = 10.0      # seconds from connecting to transmission (0 = no limit)
    client_inflight: int = 64 << 20      # bytes one client may hold: requests in flight, replies it has not read
    total_inflight: int = 256 << 20      # the same, every client together
    tls: str = "off"                     # off | on | require (NBD_OPT_STARTTLS), as nbdkit's --tls
    tls_certificates: str | None = None  # directory of ca-cert.pem, server-cert.pem, server-key.pem
    tls_verify_peer: bool = False        # clients must present a certificate signed by ca-cert.pem


@dataclass(frozen=True)
class DeviceConfig:
    """This controller as a device: where other controllers' device links reach it (``[device]``)."""

    listen: str | None = None            # "HOST:PORT" of --device-listen (None: no device links)
    tls_certificates: str | None = None  # links must speak TLS (link+tls://): server-cert.pem, server-key.pem here
    tls_verify_peer: bool = False        # ... and present a client certificate signed by ca-cert.pem here


@dataclass(frozen=True)
class PoolConfig:
    """An ordered pool of backup LUNs; the first member starts active."""

    members: tuple[str, ...]
    mirror: str = "sync"
    refuse_last_copy: bool = False   # refuse a TRIGGER that would leave the LUN without a consistent backup


@dataclass(frozen=True)
class BackupConfig:
    """A primary backup LUN: a continuous mirror of the primary that feeds its own pool (a cascade)."""

    url: str
    mirror: str = "sync"
    pool: PoolConfig | None = None
    stripe: int | None = None            # layout = "stripe": the backup LUN over several devices
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class LunConfig:
    name: str
    url: str
    pool: PoolConfig | None = None       # pool fed by the primary itself
    backup: BackupConfig | None = None   # cascade: primary -> backup LUN -> backup.pool
    stripe: int | None = None            # layout = "stripe": bytes per stripe unit (hal/stripe.py)
    parts: tuple[str, ...] = ()          # layout = "stripe": the part devices, in stripe order


@dataclass(frozen=True)
class GroupConfig:
    """A consistency group of this controller's LUNs, cut by one TRIGGER (``TRIGGER ON <name>``)."""

    name: str
    luns: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    luns: tuple[LunConfig, ...]
    groups: tuple[GroupConfig, ...] = ()
    chunk_size: int = 64 << 10          # dirty-tracking granularity (bytes, power of two)
    ring_capacity: int = 4096           # request ring slots (power of two)
    metadata_dir: str | None = None     # where pool state and manifests persist (None: nowhere)
    digest_region: int = 1 << 20        # bytes per region digest in a manifest
    async_queue_ops: int = 4096         # asynchronous mirror: queued ops before backpressure
    async_queue_bytes: int = 64 << 20   # asynchronous mirror: queued payload bytes before backpressure
    resync: ResyncConfig = field(default_factory=ResyncConfig)
    nbd: NbdConfig = field(default_factory=NbdConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    source: str = "<default>"           # where it was loaded from, for messages


_TOP_KEYS = {"controller", "resync", "nbd", "device", "lun", "group"}
_CONTROLLER_KEYS = {"chunk_size", "ring_capacity", "metadata_dir", "digest_region",
                    "async_queue_ops", "async_queue_bytes"}
_RESYNC_KEYS = {"rate", "deadline", "slice"}
_NBD_KEYS = {"handshake_timeout", "client_inflight", "total_inflight", "tls", "tls_certificates", "tls_verify_peer"}
#: the largest NBD request: a client budget must hold one
_MAX_REQUEST = 64 << 20
_DEVICE_KEYS = {"listen", "tls_certificates", "tls_verify_peer"}
_LUN_KEYS = {"name", "url", "pool", "backup", "layout", "stripe", "parts"}
LAYOUTS = ("flat", "stripe")
_POOL_KEYS = {"members", "mirror", "refuse_last_copy"}
_BACKUP_KEYS = {"url", "mirror", "pool", "layout", "stripe", "parts"}
_GROUP_KEYS = {"name", "luns"}


def _check_keys(table, valid: set[str], where: str, source: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, got {type(table).__name__}")
    for key in table:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key {key!r} in [{where}]; valid keys: {', '.join(sorted(valid))}")


def _size(value, key: str, where: str, source: str, *, power_of_two=False, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{source}: [{where}] {key} must be a size like 65536 or \"64K\", got {value!r}")
    try:
        n = parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: [{where}] {key}: {exc}") from None
    if n < minimum:
        raise ConfigError(f"{source}: [{where}] {key} must be at least {minimum}, got {value!r}")
    if power_of_two and n & (n - 1):
        raise ConfigError(f"{source}: [{where}] {key} must be a power of two, got {value!r}")
    return n


def _url(value, key: str, where: str, source: str) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"{source}: [{where}] {key} must be a device URL like \"ram://?size=256M\", got {value!r}")
    return value


def _mirror(table, where: str, source: str) -> str:
    mode = table.get("mirror", "sync")
    if mode not in MIRROR_MODES:
        raise ConfigError(f"{source}: [{where}] mirror must be one of {', '.join(MIRROR_MODES)}, got {mode!r}")
    return mode


def _pool(table, where: str, source: str) -> PoolConfig:
    _check_keys(table, _POOL_KEYS, where, source)
    members = table.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{source}: [{where}] members must be a non-empty list of device URLs")
    urls = tuple(_url(m, f"members[{i}]", where, source) for i, m in enumerate(members))
    refuse = table.get("refuse_last_copy", False)
    if not isinstance(refuse, bool):
        raise ConfigError(f"{source}: [{where}] refuse_last_copy must be true or false, got {refuse!r}")
    return PoolConfig(members=urls, mirror=_mirror(table, where, source), refuse_last_copy=refuse)


def _lun(table, index: int, source: str) -> LunConfig:
    name = table.get("name") if isinstance(table, dict) else None
    where = f"lun {name}" if isinstance(name, str) and name else f"lun #{index + 1}"
    _check_keys(table, _LUN_KEYS, where, source)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{source}: [{where}] name must be letters and digits starting with a letter "
                          f"(exports are named <name>.t<id>), got {name!r}")
    where = f"lun {name}"
    stripe, parts = _stripe_keys(table, where, source)
    if parts:
        url = "stripe:" + ",".join(parts)
    elif "url" not in table:
        raise ConfigError(f"{source}: [{where}] needs url, the primary's device URL")
    else:
        url = _url(table["url"], "url", where, source)
    pool = _pool(table["pool"], f"{where}.pool", source) if "pool" in table else None
    backup = None
    if "backup" in table:
        bt = table["backup"]
        _check_keys(bt, _BACKUP_KEYS, f"{where}.backup", source)
        bstripe, bparts = _stripe_keys(bt, f"{where}.backup", source)
        if not bparts and "url" not in bt:
            raise ConfigError(f"{source}: [{where}.backup] needs url, the primary backup LUN's device URL")
        backup = BackupConfig(
            url="stripe:" + ",".join(bparts) if bparts else _url(bt["url"], "url", f"{where}.backup", source),
            stripe=bstripe, parts=bparts,
            mirror=_mirror(bt, f"{where}.backup", source),
            pool=_pool(bt["pool"], f"{where}.backup.pool", source) if "pool" in bt else None,
        )
    return LunConfig(name=name, url=url, pool=pool, backup=backup, stripe=stripe, parts=parts)


def _stripe_keys(table, where: str, source: str) -> tuple[int | None, tuple[str, ...]]:
    """``layout``, ``stripe`` and ``parts`` of a LUN: (stripe size, part URLs), or (None, ()) when flat."""
    layout = table.get("layout", "flat")
    if layout not in LAYOUTS:
        raise ConfigError(f"{source}: [{where}] layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "flat":
        for key in ("stripe", "parts"):
            if key in table:
                raise ConfigError(f"{source}: [{where}] {key} needs layout = \"stripe\"")
        return None, ()
    if "url" in table:
        raise ConfigError(f"{source}: [{where}] a striped LUN has parts, not url")
    if "stripe" not in table:
        raise ConfigError(f"{source}: [{where}] layout = \"stripe\" needs stripe = SIZE (e.g. \"64K\")")
    stripe = _size(table["stripe"], "stripe", where, source, minimum=512)
    if stripe % 512:
        raise ConfigError(f"{source}: [{where}] stripe must be a multiple of 512 bytes, got {table['stripe']!r}")
    parts = table.get("parts")
    if not isinstance(parts, list) or len(parts) < 2:
        raise ConfigError(f"{source}: [{where}] parts must be a list of two or more device URLs, got {parts!r}")
    return stripe, tuple(_url(u, f"parts[{i}]", where, source) for i, u in enumerate(parts))


def _device_keys(url: str) -> list[tuple[str, str]]:
    """What identifies the device a URL names, as (identity, shown) pairs; [] when every open is new."""
    scheme, _, _rest = url.partition("://")
    parts = urlsplit(url)
    opts = dict(parse_qsl(parts.query, keep_blank_values=True))
    scheme = scheme.lower()
    if scheme == "file":
        path = unquote(parts.netloc + parts.path)
        if not path:
            return []
        real = os.path.realpath(path)
        keys = [(f"path {real}", real)]
        try:
            st = os.stat(real)
            keys.append((f"inode {st.st_dev}:{st.st_ino}", real))   # hard links and bind mounts
        except OSError:
            pass
        return keys
    if scheme in ("board", "serial"):
        port = opts.get("port", "") if scheme == "board" else unquote(parts.netloc + parts.path)
        if not port:
            return []
        real = os.path.realpath(port) if "://" not in port else port
        return [(f"port {real}", f"port {port}")]
    if scheme in ("link", "link+tls"):   # one LUN of another controller
        lun = unquote(parts.path).strip("/")
        return [(f"link {parts.netloc.lower()} {lun}", f"LUN {lun} of {parts.netloc}")]
    if scheme.startswith("nbd"):
        where = opts.get("socket") or parts.netloc
        shown = f"{scheme}://{parts.netloc}{parts.path}" + (f"?socket={where}" if "socket" in opts else "")
        return [(f"nbd {where} {unquote(parts.path).lstrip('/')}", shown)]
    return []


def _refuse_aliases(luns, source: str) -> None:
    """Two keys naming one device would mirror a device onto itself: every backup of it is false."""
    seen: dict[str, str] = {}
    for i, lun in enumerate(luns):
        named = [(f"luns[{i}].url", lun.url)] + [(f"luns[{i}].parts[{j}]", u) for j, u in enumerate(lun.parts)]
        if lun.pool is not None:
            named += [(f"luns[{i}].pool.members[{j}]", u) for j, u in enumerate(lun.pool.members)]
        if lun.backup is not None:
            named.append((f"luns[{i}].backup.url", lun.backup.url))
            named += [(f"luns[{i}].backup.parts[{j}]", u) for j, u in enumerate(lun.backup.parts)]
            if lun.backup.pool is not None:
                named += [(f"luns[{i}].backup.pool.members[{j}]", u) for j, u in enumerate(lun.backup.pool.members)]
        for key, url in named:
            for ident, shown in _device_keys(url):
                other = seen.get(ident)
                if other is not None and other != key:
                    raise ConfigError(f"{source}: {key} and {other} name the same device {shown}")
                seen.setdefault(ident, key)


def from_dict(doc: dict, source: str = "<dict>") -> Config:
    """A validated Config from a parsed TOML document."""
    _check_keys(doc, _TOP_KEYS, "top level", source)
    ctl = doc.get("controller", {})
    _check_keys(ctl, _CONTROLLER_KEYS, "controller", source)
    rs = doc.get("resync", {})
    _check_keys(rs, _RESYNC_KEYS, "resync", source)
    nbd = _nbd(doc.get("nbd", {}), source)
    device = _device(doc.get("device", {}), source)
    luns_doc = doc.get("lun")
    if isinstance(luns_doc, dict):
        raise ConfigError(f"{source}: 'lun' must be an array of tables: write each LUN as [[lun]] with "
                          f"name = \"...\" and url = \"...\" (not [lun] or [lun.NAME])")
    if not isinstance(luns_doc, list) or not luns_doc:
        raise ConfigError(f"{source}: no LUNs: add at least one [[lun]] table with name and url")
    luns = tuple(_lun(t, i, source) for i, t in enumerate(luns_doc))
    names = [lun.name for lun in luns]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{source}: LUN name {name!r} is used twice")

    _refuse_aliases(luns, source)
    groups = _groups(doc.get("group", []), names, source)

    kw = {}
    if "chunk_size" in ctl:
        kw["chunk_size"] = _size(ctl["chunk_size"], "chunk_size", "controller", source, power_of_two=True, minimum=512)
    if "ring_capacity" in ctl:
        kw["ring_capacity"] = _size(ctl["ring_capacity"], "ring_capacity", "controller", source,
                                    power_of_two=True, minimum=2)
    if "metadata_dir" in ctl:
        if not isinstance(ctl["metadata_dir"], str) or not ctl["metadata_dir"]:
            raise ConfigError(f"{source}: [controller] metadata_dir must be a directory path")
        kw["metadata_dir"] = ctl["metadata_dir"]
    if "digest_region" in ctl:
        kw["digest_region"] = _size(ctl["digest_region"], "digest_region", "controller", source,
                                    power_of_two=True, minimum=512)
    if "async_queue_ops" in ctl:
        kw["async_queue_ops"] = _size(ctl["async_queue_ops"], "async_queue_ops", "controller", source)
    if "async_queue_bytes" in ctl:
        kw["async_queue_bytes"] = _size(ctl["async_queue_bytes"], "async_queue_bytes", "controller", source)

    rkw = {}
    if "rate" in rs:
        rkw["rate"] = _size(rs["rate"], "rate", "resync", source, minimum=0)
    if "deadline" in rs:
        d = rs["deadline"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0:
            raise ConfigError(f"{source}: [resync] deadline must be a number of seconds >= 0, got {d!r}")
        rkw["deadline"] = float(d)
    if "slice" in rs:
        rkw["slice"] = _size(rs["slice"], "slice", "resync", source, minimum=512)
    return Config(luns=luns, groups=groups, resync=ResyncConfig(**rkw), nbd=nbd, device=device, source=source,
                  **kw)


def _groups(doc, lun_names: list[str], source: str) -> tuple[GroupConfig, ...]:
    """[[group]] tables: a name no LUN has, and two or more distinct LUNs of this configuration."""
    if isinstance(doc, dict):
        raise ConfigError(f"{source}: 'group' must be an array of tables: write each group as [[group]] with "
                          f"name = \"...\" and luns = [\"...\", ...]")
    if not isinstance(doc, list):
        raise ConfigError(f"{source}: 'group' must be an array of [[group]] tables, got {doc!r}")
    out = []
    for index, table in enumerate(doc):
        name = table.get("name") if isinstance(table, dict) else None
        where = f"group {name}" if isinstance(name, str) and name else f"group #{index + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{where}] must be a table with name and luns")
        _check_keys(table, _GROUP_KEYS, where, source)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{source}: [{where}] name must be letters and digits starting with a letter "
                              f"(exports are named <group>.t<id>.<lun>), got {name!r}")
        if name in lun_names:
            raise ConfigError(f"{source}: [{where}] name is also a LUN's: TRIGGER ON {name} must name one thing")
        if any(g.name == name for g in out):
            raise ConfigError(f"{source}: group name {name!r} is used twice")
        luns = table.get("luns")
        if not isinstance(luns, list) or len(luns) < 2 or not all(isinstance(x, str) for x in luns):
            raise ConfigError(f"{source}: [{where}] luns must be a list of two or more LUN names, got {luns!r}")
        for lun in luns:
            if lun not in lun_names:
                raise ConfigError(f"{source}: [{where}] names no LUN {lun!r}; LUNs: {', '.join(lun_names)}")
            if luns.count(lun) > 1:
                raise ConfigError(f"{source}: [{where}] lists LUN {lun!r} twice")
        out.append(GroupConfig(name=name, luns=tuple(luns)))
    return tuple(out)


def parse_host_port(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or just 'PORT') -> (host, port); ValueError says what is expected."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected HOST:PORT with a port from 0 to 65535")
    return host, int(port)


def _tls_keys(table, section: str, source: str) -> dict:
    """``tls_certificates`` (a directory path) and ``tls_verify_peer`` (a boolean) of ``[section]``, checked."""
    kw = {}
    if "tls_certificates" in table:
        if not isinstance(table["tls_certificates"], str) or not table["tls_certificates"]:
            raise ConfigError(f"{source}: [{section}] tls_certificates must be a directory path, "
                              f"got {table['tls_certificates']!r}")
        kw["tls_certificates"] = table["tls_certificates"]
    if "tls_verify_peer" in table:
        if not isinstance(table["tls_verify_peer"], bool):
            raise ConfigError(f"{source}: [{section}] tls_verify_peer must be true or false, "
                              f"got {table['tls_verify_peer']!r}")
        kw["tls_verify_peer"] = table["tls_verify_peer"]
    return kw


def _device(table, source: str) -> DeviceConfig:
    _check_keys(table, _DEVICE_KEYS, "device", source)
    kw = _tls_keys(table, "device", source)
    if "tls_verify_peer" in kw and "tls_certificates" not in kw:
        raise ConfigError(f"{source}: [device] tls_verify_peer needs tls_certificates")
    if "listen" not in table:
        if kw:
            raise ConfigError(f"{source}: [device] tls keys need listen = \"HOST:PORT\"")
        return DeviceConfig()
    value = table["listen"]
    if not isinstance(value, str):
        raise ConfigError(f"{source}: [device] listen must be \"HOST:PORT\", got {value!r}")
    try:
        parse_host_port(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: [device] listen {exc}") from None
    return DeviceConfig(listen=value, **kw)


def _nbd(table, source: str) -> NbdConfig:
    _check_keys(table, _NBD_KEYS, "nbd", source)
    kw = {}
    if "handshake_timeout" in table:
        t = table["handshake_timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ConfigError(f"{source}: [nbd] handshake_timeout must be a number of seconds >= 0 (0: no limit), "
                              f"got {t!r}")
        kw["handshake_timeout"] = float(t)
    for key in ("client_inflight", "total_inflight"):
        if key in table:
            kw[key] = _size(table[key], key, "nbd", source, minimum=_MAX_REQUEST)
    if "tls" in table:
        if table["tls"] not in ("off", "on", "require"):
            raise ConfigError(f"{source}: [nbd] tls must be \"off\", \"on\" or \"require\", got {table['tls']!r}")
        kw["tls"] = table["tls"]
    kw.update(_tls_keys(table, "nbd", source))
    cfg = NbdConfig(**kw)
    if cfg.tls != "off" and not cfg.tls_certificates:
        raise ConfigError(f"{source}: [nbd] tls = {cfg.tls!r} needs tls_certificates (a directory holding "
                          f"server-cert.pem and server-key.pem)")
    if cfg.tls_verify_peer and cfg.tls == "off":
        raise ConfigError(f"{source}: [nbd] tls_verify_peer needs tls = \"on\" or \"require\"")
    if cfg.total_inflight < cfg.client_inflight:
        raise ConfigError(f"{source}: [nbd] total_inflight ({cfg.total_inflight}) must be at least "
                          f"client_inflight ({cfg.client_inflight})")
    return cfg


def loads(text: str, source: str = "<string>") -> Config:
    """A validated Config from TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return from_dict(doc, source)


def load(path: str) -> Config:
    """A validated Config from a TOML file."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration {path!r} is not UTF-8 text") from None
    return loads(text, source=path)


def default() -> Config:
    """The embedded default: RAM lun0 (256 MiB) mirrored to a pool of 3 RAM backup LUNs."""
    return loads(DEFAULT_TOML, source="<embedded default>")
