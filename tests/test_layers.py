"""The controller's modules keep to their layer: no private attribute of another object, no HAL scheme sniffing."""
from __future__ import annotations

import os
import re

FIRMWARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "firmware")
#: ``obj._name`` where obj is not self or cls: reading or writing another object's private state
FOREIGN_PRIVATE = re.compile(r"\b(?!self\b|cls\b)([A-Za-z_]\w*(?:\[[^\]]*\])?(?:\(\))?)\._[a-z]\w*")
#: deciding by a device's URL scheme instead of by the attributes of its contract
SCHEME_TEST = re.compile(r"""\bscheme\s*(?:[!=]=|\bin\b)|(?:[!=]=|\bin)\s*\(?["'](?:ram|file|nbd|board|serial)["']""")


def controller_modules() -> list[str]:
    return sorted(os.path.join(FIRMWARE, f) for f in os.listdir(FIRMWARE) if f.endswith(".py"))


def code_lines(path: str):
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            code = line.split("#", 1)[0]
            if code.strip():
                yield n, code


def test_the_patterns_find_what_they_are_for():
    assert FOREIGN_PRIVATE.search("pool._activate(m)") and FOREIGN_PRIVATE.search("ctl._owner")
    assert FOREIGN_PRIVATE.search("lun.backup_node._zeros_any = True")
    assert not FOREIGN_PRIVATE.search("self._ring.push(op)") and not FOREIGN_PRIVATE.search("cls._cache")
    assert SCHEME_TEST.search('if dev.scheme != "ram":') and SCHEME_TEST.search("url.scheme in KNOWN")
    assert not SCHEME_TEST.search("self.scheme = device.scheme")


def test_no_controller_module_reads_another_layers_private_state_or_sniffs_a_scheme():
    offenders = []
    for path in controller_modules():
        for n, code in code_lines(path):
            if FOREIGN_PRIVATE.search(code) or SCHEME_TEST.search(code):
                offenders.append(f"{os.path.basename(path)}:{n}: {code.strip()}")
    assert not offenders, offenders


def test_the_hal_never_imports_the_firmware():
    """hal/ is the layer below the controller: a device backend (link+tls:// included) takes nothing from above."""
    hal = os.path.join(os.path.dirname(FIRMWARE), "hal")
    found = []
    for root, _dirs, files in os.walk(hal):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                for n, code in code_lines(path):
                    if re.search(r"\bsplitpoint\.firmware\b|\bfrom\s+\.\.firmware\b", code):
                        found.append(f"{os.path.relpath(path, hal)}:{n}: {code.strip()}")
    assert not found, found
