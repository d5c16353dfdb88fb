"""Whether the devices a run needs exist here: the one check every front end (scripts/run.sh via
the pipeline, the Dagster assets, the `minillm` commands) makes before any work, so a run that
needs CUDA on a machine without it stops in seconds with one line, not minutes later with torch's
"no NVIDIA driver" traceback.
"""

from __future__ import annotations

import torch

from minillm_core.errors import DeviceUnavailableError
from minillm_core.profiles import preset

# The concerns of a profile that name a device (the training stages and the evaluation).
DEVICE_CONCERNS = ("pretrain", "sft", "dpo", "eval")


def missing(device: str) -> str | None:
    """Why `device` cannot be used here (None when it can, or for `auto`, which picks what exists)."""
    if device == "auto":
        return None
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device here (torch.cuda.is_available() is False)"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"no CUDA device {dev.index} here (torch.cuda.device_count() is {count})"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "no MPS device here (torch.backends.mps.is_available() is False)"
    return None


def require_device(device: str, what: str | None = None, instead: str = "Use --device cpu") -> None:
    """DeviceUnavailableError, one line naming what asked for `device` (default `--device X`)
    and what to use instead, when `device` does not exist on this machine."""
    why = missing(device)
    if why:
        what = what or f"--device {device}"
        raise DeviceUnavailableError(f"{what} needs {_kind(device)}; {why}. {instead}")


def profile_devices(profile: str) -> list[str]:
    """The devices a profile's presets name, in stage order, without repeats."""
    found = (preset(profile, c).get("device") for c in DEVICE_CONCERNS)
    return list(dict.fromkeys(d for d in found if d))


def require_profile(
    profile: str,
    instead: str = "Run `scripts/run.sh --profile cpu` or `scripts/run.sh --smoke-test`",
) -> None:
    """DeviceUnavailableError when a device the profile names does not exist on this machine:
    'the gpu profile needs CUDA; no CUDA device here (...). Run ...'."""
    for device in profile_devices(profile):
        require_device(device, f"the {profile} profile", instead)


def _kind(device: str) -> str:
    return {"cuda": "CUDA", "mps": "MPS"}.get(torch.device(device).type, device)
