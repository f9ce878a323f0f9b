"""firmware/triggers.py, table-driven: the control-line grammar, labels and trigger export names."""
from __future__ import annotations

import pytest

from splitpoint.firmware import triggers as T

GRAMMAR = [
    ("TRIGGER", T.TriggerCommand(None, None)),
    ("trigger", T.TriggerCommand(None, None)),
    ("  TRIGGER   nightly backup  ", T.TriggerCommand(None, "nightly backup")),
    ("TRIGGER ON lun1", T.TriggerCommand("lun1", None)),
    ("TRIGGER ON grp label with words", T.TriggerCommand("grp", "label with words")),
    ("TRIGGER on call", T.TriggerCommand(None, "on call")),     # ON is the keyword in capitals only
    ("TRIGGER ONLINE", T.TriggerCommand(None, "ONLINE")),
    ("TRIGGER " + "é" * 32, T.TriggerCommand(None, "é" * 32)),  # 64 bytes of UTF-8
    ("STATUS", T.StatusCommand()),
    ("status", T.StatusCommand()),
    ("VERIFY", T.VerifyCommand(None, None)),
    ("VERIFY 3", T.VerifyCommand(None, 3)),
    ("VERIFY lun0", T.VerifyCommand("lun0", None)),
    ("VERIFY lun0 12", T.VerifyCommand("lun0", 12)),
    ("PING", T.PingCommand()),
    ("PIN lun0.t1", T.PinCommand("lun0.t1")),
    ("UNPIN lun0.latest", T.UnpinCommand("lun0.latest")),
    ("RESTORE lun0.t2", T.RestoreCommand("lun0.t2", None)),
    ("RESTORE lun0.t2 ON lun1", T.RestoreCommand("lun0.t2", "lun1")),
    ("", None),
    ("   \t ", None),
]

ERRORS = [
    ("FROBNICATE now", "unknown command 'FROBNICATE'; commands: " + T.COMMANDS),
    ("TRIGGER ON", "TRIGGER ON needs a LUN or group name"),
    ("TRIGGER " + "x" * 65, "label is 65 bytes; at most 64"),
    ("TRIGGER " + "é" * 33, "label is 66 bytes; at most 64"),
    ("TRIGGER ON lun0 " + "x" * 65, "label is 65 bytes; at most 64"),
    ("STATUS x", "STATUS takes no argument"),
    ("PING x", "PING takes no argument"),
    ("VERIFY lun0 x", "usage: VERIFY [name] [trigger id]"),
    ("VERIFY 1 2", "usage: VERIFY [name] [trigger id]"),
    ("VERIFY lun0 ²", "usage: VERIFY [name] [trigger id]"),
    ("PIN", "PIN needs a backup name (for example lun0.t1)"),
    ("UNPIN a b", "usage: UNPIN <backup>"),
    ("RESTORE", "RESTORE needs a backup name (for example lun0.t1)"),
    ("RESTORE lun0.t1 ON", "RESTORE ON needs a LUN name"),
    ("RESTORE lun0.t1 lun1", "usage: RESTORE <backup> [ON <lun>]"),
    ("RESTORE lun0.t1 ON lun1 extra", "usage: RESTORE <backup> [ON <lun>]"),
]


@pytest.mark.parametrize("line, command", GRAMMAR)
def test_grammar(line, command):
    assert T.parse_control_line(line) == command


@pytest.mark.parametrize("line, reason", ERRORS)
def test_grammar_errors(line, reason):
    with pytest.raises(T.ControlSyntaxError) as info:
        T.parse_control_line(line)
    assert str(info.value) == reason
    assert T.reply_error(info.value) == "ERR " + reason


def test_every_verb_of_the_grammar_is_listed_and_parsed():
    for verb in ("TRIGGER", "STATUS", "VERIFY", "PING", "PIN", "UNPIN", "RESTORE"):
        assert verb in T.COMMANDS
        with pytest.raises(T.ControlSyntaxError) as info:
            T.parse_control_line(verb + " " + "x " * 40 + "x" * 65)
        assert "unknown command" not in str(info.value)


@pytest.mark.parametrize("data, label", [
    (b"nightly", b"nightly"),
    (b"nightly\0after", b"nightly"),
    (b"nightly\0\0\0", b"nightly"),
    (b"\0" * 512, None),
    (b"", None),
    (b"x" * 100, b"x" * 64),
    (b"x" * 64 + b"\0", b"x" * 64),
    (bytearray(b"ab\0c"), b"ab"),
    (memoryview(b"\xff\xfe\0z"), b"\xff\xfe"),
])
def test_special_lun_label(data, label):
    assert T.special_lun_label(data) == label


@pytest.mark.parametrize("name, target", [
    ("trigger", T.TriggerTarget(T.SPECIAL_LUN, None)),
    ("trigger.lun1", T.TriggerTarget(T.SPECIAL_LUN, "lun1")),
    ("trigger.grp", T.TriggerTarget(T.SPECIAL_LUN, "grp")),
    ("lun0.trigger", T.TriggerTarget(T.SPECIAL_PATH, "lun0")),
    ("trigger.", None),
    (".trigger", None),
    ("lun0", None),
    ("lun0.t1", None),
    ("triggers", None),
])
def test_trigger_export_names(name, target):
    assert T.trigger_export(name) == target


def test_export_names_round_trip():
    assert T.trigger_export(T.special_lun_export()) == T.TriggerTarget(T.SPECIAL_LUN, None)
    assert T.trigger_export(T.special_lun_export("lun3")) == T.TriggerTarget(T.SPECIAL_LUN, "lun3")
    assert T.trigger_export(T.special_path_export("lun3")) == T.TriggerTarget(T.SPECIAL_PATH, "lun3")


def test_replies_are_one_line():
    assert T.reply_error("two\nlines\r\nhere") == "ERR two lines here"
    assert T.reply_triggered(3, 17) == "OK 3 seq=17"
    assert T.reply_json({"a": [1, 2]}) == '{"a":[1,2]}'
    assert T.reply_unsupported(T.PinCommand("x")) == "ERR PIN is not supported by this controller"


@pytest.mark.parametrize("target, label", [
    (None, None), (None, "nightly"), ("lun1", None), ("lun1", "after upgrade"), ("g", "ON call"),
    (None, "on call"), (None, "  padded  "), (None, "é" * 32),
])
def test_trigger_line_round_trips_through_the_grammar(target, label):
    line = T.trigger_line(target, label)
    assert T.parse_control_line(line) == T.TriggerCommand(target, label.strip() if label else None)


@pytest.mark.parametrize("target, label, reason", [
    (None, "ON lun1", "cannot start with the word ON"),
    (None, "x" * 65, "label is 65 bytes; at most 64"),
    ("lun1", "two\nlines", "a label is one line"),
    ("two words", None, "a LUN or group name is one word"),
    ("", None, "a LUN or group name is one word"),
])
def test_trigger_line_refuses_what_the_grammar_cannot_carry(target, label, reason):
    with pytest.raises(T.ControlSyntaxError, match=reason):
        T.trigger_line(target, label)


def test_api_control_line_follows_the_grammar():
    from splitpoint.firmware.controller import Controller

    ctl = Controller.from_config(None)
    try:
        lines = []
        control = T.ControlLine(ctl, "lun0")
        control.handle("TRIGGER ON lun0 first", lines.append)
        ctl.drain()
        ctl.settle()   # the cut's digest is computed in the background: VERIFY then compares it
        control.handle("VERIFY lun0 1", lines.append)
        for line in ("TRIGGER ON nolun", "PIN lun0.t1", "RESTORE lun0.t1 ON lun0", "", "VERIFY x y"):
            control.handle(line, lines.append)
        assert lines[0].startswith("OK 1 seq=")
        (result,) = __import__("json").loads(lines[1])
        assert result["trigger_id"] == 1 and result["ok"]
        ctl.drain()   # RESTORE is queued in sequence: answered once the controller has carried it out
        assert lines[2:-1] == ["ERR no LUN or group named 'nolun'; LUNs: lun0",
                               "OK",
                               "ERR usage: VERIFY [name] [trigger id]"]
        assert lines[-1].startswith("OK restore lun0 seq=")
    finally:
        ctl.close()
