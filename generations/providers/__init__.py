"""Provider adapters, keyed by kind. See base.py for the protocol."""

from .apiframe import Apiframe
from .base import Adapter, GenerationRequest, ModelSpec, Outcome, ProviderError, Unsupported
from .bfl import Bfl
from .maxapi import MaxApi
from .pixeldojo import PixelDojo
from .vtrix import Vtrix

# In the order `demo` ranks its sandbox accounts ("Best available" tries them in it).
PROVIDERS: dict[str, type[Adapter]] = {cls.kind: cls for cls in (Apiframe, Vtrix, PixelDojo, MaxApi, Bfl)}


def kind_choices() -> list[tuple[str, str]]:
    """The provider kinds an account can have, for model fields: a callable, so that the migration state
    names this function rather than the list, and a new adapter needs no migration."""
    return [(kind, cls.label) for kind, cls in PROVIDERS.items()]


__all__ = [
    "PROVIDERS",
    "Adapter",
    "Apiframe",
    "Bfl",
    "GenerationRequest",
    "MaxApi",
    "ModelSpec",
    "Outcome",
    "PixelDojo",
    "ProviderError",
    "Unsupported",
    "Vtrix",
    "kind_choices",
]
