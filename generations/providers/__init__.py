"""Provider adapters, keyed by kind. See base.py for the protocol."""

from .apiframe import Apiframe
from .base import Adapter, GenerationRequest, ModelSpec, Outcome, ProviderError, Unsupported
from .maxapi import MaxApi
from .pixeldojo import PixelDojo
from .vtrix import Vtrix

PROVIDERS: dict[str, type[Adapter]] = {cls.kind: cls for cls in (MaxApi, Vtrix, Apiframe, PixelDojo)}

__all__ = [
    "PROVIDERS",
    "Adapter",
    "Apiframe",
    "GenerationRequest",
    "MaxApi",
    "ModelSpec",
    "Outcome",
    "PixelDojo",
    "ProviderError",
    "Unsupported",
    "Vtrix",
]
