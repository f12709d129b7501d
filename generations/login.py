"""`login_required` for every browser view, htmx fragments included: an htmx request whose session has ended
(a logout in another tab, an expired cookie) gets a 401 with `HX-Redirect` to the login page, so the whole
page goes there once with a "log in again" line, instead of the login page pasted into a job column, the
gallery or the price (issue 8, bug 4). Other requests get Django's redirect as before."""

from __future__ import annotations

import functools
from urllib.parse import urlencode, urlsplit

from django.contrib.auth.decorators import login_required as django_login_required
from django.http import HttpResponse
from django.shortcuts import resolve_url
from django.urls import reverse


def login_required(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated and request.headers.get("HX-Request") == "true":
            page = urlsplit(request.headers.get("HX-Current-URL", "")).path or reverse("studio")
            response = HttpResponse("Your session has ended: log in again.", status=401)
            response["HX-Redirect"] = f"{resolve_url('login')}?{urlencode({'next': page, 'expired': 1})}"
            return response
        return django_login_required(view)(request, *args, **kwargs)

    return wrapper
