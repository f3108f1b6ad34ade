"""This machine's TPU chips, found without starting JAX: the CLI picks JAX's platform before JAX starts, and
jax.distributed asks a TPU VM's metadata server only where there are chips.

Chips are Google PCI devices with a TPU device id, counted as jax/_src/hardware_utils.py counts them; Google's
other PCI devices (the gVNIC network card of every GCE VM) are not TPUs.
"""

from __future__ import annotations

import glob
import os

GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})  # v3 ... 7x
PCI_DEVICES = "/sys/bus/pci/devices"


def count(pci_devices: str = PCI_DEVICES) -> int:
    """TPU chips on this machine's PCI bus."""
    chips = 0
    for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
        try:
            with open(vendor) as f:
                if f.read().strip() != GOOGLE_PCI_VENDOR:
                    continue
            with open(os.path.join(os.path.dirname(vendor), "device")) as f:
                chips += f.read().strip() in TPU_PCI_DEVICES
        except OSError:
            continue
    return chips


def present() -> bool:
    """TPU chips here: on the PCI bus, or as the device nodes libtpu opens (/dev/accel* on v4)."""
    return count() > 0 or bool(glob.glob("/dev/accel[0-9]*"))
