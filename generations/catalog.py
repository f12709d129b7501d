"""The models FluxWeb offers, built from the adapters' declarations, the enabled accounts and the prices."""

from __future__ import annotations

from . import credits
from .models import ProviderAccount
from .providers import PROVIDERS

NAMES = {
    "flux-plus": "FLUX Plus",
    "flux-pro-2": "FLUX.2 [pro]",
    "flux-2-max": "FLUX.2 [max]",
}


def model_ids() -> list[str]:
    ids = {model for adapter in PROVIDERS.values() for model in adapter.models}
    return sorted(ids, key=lambda m: (list(NAMES).index(m) if m in NAMES else 99, m))


def catalog(accounts: list[ProviderAccount] | None = None) -> list[dict]:
    """GET /api/v1/models: per model, the accounts that serve it with each one's options and prices."""
    if accounts is None:
        accounts = [a for a in ProviderAccount.objects.filter(enabled=True) if a.has_key]
    result = []
    for model in model_ids():
        serving = [a for a in accounts if model in a.adapter_class.models]
        result.append(
            {
                "id": model,
                "name": NAMES.get(model, model),
                "providers": [a.slug for a in serving],
                "options": {a.slug: a.adapter_class.models[model].options() for a in serving},
                "price": {a.slug: credits.price_table(a.kind, model) for a in serving},
            }
        )
    return result
