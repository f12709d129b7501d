"""The client's address, for login throttling: the connection's, unless that is one of
FLUXWEB_TRUSTED_PROXIES, whose X-Forwarded-For is then believed back to the first hop no trusted proxy made.
Anything else in X-Forwarded-For is the client's own claim and ignored: a client could name any address."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(proxy, strict=False) for proxy in settings.FLUXWEB_TRUSTED_PROXIES)


def client_ip(request: HttpRequest) -> str:
    address = request.META.get("REMOTE_ADDR", "")
    if not trusted(address):
        return address
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):  # nginx appends the address it saw: the last hops are the proxies' own
        if not trusted(hop):
            return hop
    return address
