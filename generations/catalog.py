"""The models FluxWeb offers, built from the adapters' declarations, the enabled accounts and the prices."""

from __future__ import annotations

from . import credits
from .models import ProviderAccount
from .providers import PROVIDERS, GenerationRequest, Unsupported
from .refusal import Refusal

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


# -- routing: which account serves a request -------------------------------------------------------------
def accounts_serving(model: str) -> list[ProviderAccount]:
    return [
        account
        for account in ProviderAccount.objects.filter(enabled=True).exclude(api_key_encrypted="")
        if model in account.adapter_class.models
    ]


def choose_account(request: GenerationRequest, slug: str | None) -> tuple[ProviderAccount, credits.Quote]:
    """The named account, or the enabled accounts that serve the request by priority, then price."""
    if slug:
        account = ProviderAccount.objects.filter(slug=slug).first()
        if account is None or not account.enabled or not account.has_key:
            raise Refusal(
                "unknown_provider",
                f"There is no enabled provider account {slug!r}.",
                status=400,
                field="provider",
            )
        if account.breaker_state() == "open":
            # Fail fast, credits untouched: the account failed its last calls (reliability.md 8.14).
            raise Refusal(
                "provider_unavailable",
                f"The {slug} provider account is failing right now; try again in a minute, "
                "or choose another provider.",
                status=503,
                field="provider",
            )
        candidates = [account]
    else:
        candidates = accounts_serving(request.model)
        if not candidates:
            raise Refusal(
                "no_provider",
                f"No enabled provider account serves {request.model}; ask an admin.",
                status=400,
                field="model",
            )
        # "Best available" skips an account whose circuit breaker is open, unless every one is open.
        candidates = [a for a in candidates if a.breaker_state() != "open"] or candidates
    refusals: list[Unsupported] = []
    choices = []
    for account in candidates:
        try:
            account.adapter_class("", "").validate(request)
        except Unsupported as exc:
            refusals.append(exc)
            continue
        choices.append((account.priority, credits.quote(account.kind, request), account))
    if not choices:
        raise refusals[0]
    _, price, account = min(choices, key=lambda c: (c[0], c[1].total, c[2].slug))
    return account, price
