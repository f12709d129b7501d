"""Provider webhooks: a per-job unguessable URL, the signature checked over the raw body, and the body
treated only as a hint to poll now (reliability.md 3: never trust a URL in a webhook body)."""

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import sweeper
from .models import Generation

MAX_BODY = 1024 * 1024


@csrf_exempt
@require_POST
def receive(request, token: str):
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return HttpResponse("malformed Content-Length", status=400)
    if length > MAX_BODY:
        return HttpResponse(status=413)
    generation = Generation.objects.select_related("account").filter(webhook_token=token).first()
    if generation is None:
        return HttpResponse(status=404)
    body = request.body
    if not generation.account.adapter().verify_webhook(request.headers, body):
        return HttpResponse("bad signature", status=401)
    if not generation.is_terminal:
        sweeper.webhook_hint(generation)
    return HttpResponse(status=204)
