"""Device link settings are checked like every key: [device] in the configuration, link:// URLs."""
from __future__ import annotations

import pytest

from splitpoint import config
from splitpoint.hal import BadURLError, open_device

LUN = '[[lun]]\nname = "lun0"\nurl = "ram://?size=1M"\n'


@pytest.mark.parametrize("device,message", [
    ('listen = "somewhere"', r"\[device\] listen 'somewhere': expected HOST:PORT"),
    ("listen = 10810", r"\[device\] listen must be \"HOST:PORT\""),
    ('listen = ":1"\nport = 3', r"unknown key 'port' in \[device\]; valid keys: listen, tls_certificates, tls_verify_peer"),
    ('listen = ":1"\ntls_verify_peer = true', r"tls_verify_peer needs tls_certificates"),
    ('tls_certificates = "/x"', r"tls keys need listen"),
])
def test_bad_device_tables_name_the_problem(device, message):
    with pytest.raises(config.ConfigError, match=message):
        config.loads(f"[device]\n{device}\n\n{LUN}")


def test_a_device_table_is_kept():
    cfg = config.loads(f'[device]\nlisten = "0.0.0.0:10810"\ntls_certificates = "/etc/sp"\n\n{LUN}')
    assert (cfg.device.listen, cfg.device.tls_certificates, cfg.device.tls_verify_peer) == \
        ("0.0.0.0:10810", "/etc/sp", False)
    assert config.loads(LUN).device.listen is None


@pytest.mark.parametrize("url,message", [
    ("link://127.0.0.1:1/lun0?speed=3", "unknown option 'speed'"),
    ("link://127.0.0.1/lun0", "needs HOST:PORT"),
    ("link://127.0.0.1:1/", "names no LUN"),
    ("link://127.0.0.1:1/lun0?window=99", "window=99 is out of range"),
    ("link+tls://127.0.0.1:1/lun0", "needs tls-certificates=DIR"),
    ("link://127.0.0.1:1/lun0?tls-certificates=/x", "is for link\\+tls:// URLs"),
    ("link+tls://127.0.0.1:1/lun0?tls-certificates=/nonexistent", "does not exist"),
])
def test_bad_link_urls_are_refused_with_the_grammar(url, message):
    with pytest.raises(BadURLError, match=message):
        open_device(url)


def test_two_keys_naming_one_far_lun_are_refused():
    with pytest.raises(config.ConfigError, match="name the same device LUN lun0 of far:10810"):
        config.loads(f'{LUN}\n[lun.pool]\nmembers = ["link://far:10810/lun0", "ram://?size=1M"]\n\n'
                     f'[lun.backup]\nurl = "link+tls://far:10810/lun0?tls-certificates=/x"\n')
