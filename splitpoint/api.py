"""The public Python API of splitpoint in one import.

    from splitpoint.api import Controller, load_config
    ctl = Controller.from_config(load_config("sp.toml"))   # or Controller.from_config(None): the default
    ctl.write("lun0", 0, data); t = ctl.trigger("lun0", "nightly"); ctl.read_backup("lun0", t.id, 0, 4096)

Only names re-exported here are promised to stay stable; everything else in
``splitpoint.firmware`` is internal to the controller.
"""
from splitpoint.config import Config, ConfigError, default as default_config, load as load_config, loads as loads_config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.group import ConsistencyGroup
from splitpoint.firmware.errors import (BadRequestError, ControllerError, DeviceIOError, DeviceOpenError, FrozenMemberError,
                                        LabelTooLongError, MetadataError, MisalignedError, NoSuchBackupError,
                                        NoSuchLunError, OutOfRangeError, QueueFullError, ReadOnlyError,
                                        ShuttingDownError, ZeroLengthError)
from splitpoint.firmware.requests import (FLAG_FAST_ZERO, FLAG_FUA, FLAG_NO_HOLE, BackupInfo, Completion, Op,
                                          TriggerResult, VerifyResult)
from splitpoint.firmware.triggers import ControlLine, OpcodeTrigger, SpecialLunTrigger, SpecialPathTrigger, TriggerSource

__all__ = [
    "Config", "ConfigError", "default_config", "load_config", "loads_config", "Controller", "ConsistencyGroup",
    "BadRequestError", "ControllerError", "DeviceIOError", "DeviceOpenError", "FrozenMemberError", "LabelTooLongError",
    "MetadataError", "MisalignedError", "NoSuchBackupError", "NoSuchLunError", "OutOfRangeError",
    "QueueFullError", "ReadOnlyError", "ShuttingDownError", "ZeroLengthError",
    "FLAG_FAST_ZERO", "FLAG_FUA", "FLAG_NO_HOLE", "BackupInfo", "Completion", "Op", "TriggerResult", "VerifyResult",
    "ControlLine", "OpcodeTrigger", "SpecialLunTrigger", "SpecialPathTrigger", "TriggerSource",
]
