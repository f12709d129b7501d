"""Provider adapters, keyed by kind. See base.py for the protocol."""

from .apiframe import Apiframe
from .base import Adapter, GenerationRequest, ModelSpec, Outcome, ProviderError, Unsupported
from .maxapi import MaxApi
from .pixeldojo import PixelDojo
from .vtrix import Vtrix

# In the order `demo` ranks its sandbox accounts ("Best available" tries them in it).
PROVIDERS: dict[str, type[Adapter]] = {cls.kind: cls for cls in (Apiframe, Vtrix, PixelDojo, MaxApi)}


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
