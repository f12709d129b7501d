"""Independent provider emulators, written from providers.md and the seed pages (not from the sandbox)."""

from .apiframe import ApiframeEmulator
from .base import Emulator, Recorded, implied_size
from .maxapi import MaxApiEmulator
from .pixeldojo import PixelDojoEmulator
from .vtrix import VtrixEmulator

EMULATORS: dict[str, type[Emulator]] = {
    cls.name: cls for cls in (MaxApiEmulator, VtrixEmulator, ApiframeEmulator, PixelDojoEmulator)
}

__all__ = [
    "EMULATORS",
    "ApiframeEmulator",
    "Emulator",
    "MaxApiEmulator",
    "PixelDojoEmulator",
    "Recorded",
    "VtrixEmulator",
    "implied_size",
]
