"""Request limits and error shapes, before any view reads the request.

- A body over the limit is refused by its Content-Length before anything reads it: 413, in the contract's JSON
  shape on /api/ and as a short HTML page elsewhere (Django would answer its HTML 400 page once a view read
  `request.body`). Multipart bodies may carry reference images, so theirs is larger.
- A Content-Length that is not a number, or a path or query string holding a NUL character (PostgreSQL refuses it in
  text, as a 500) is a 400.
- No error leaves /api/ without the JSON shape: a 400 from a suspicious request, a 500, whatever answered it.
- SQLite's "database is locked" is never a 500 (DatabaseBusyMiddleware).
"""

from __future__ import annotations

import logging
import random
import time

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape
from django.views import defaults

# The most files a multipart body needs: the reference images of the most generous model.
MULTIPART_FILES = 8
CODES = {
    400: "invalid",
    401: "unauthorized",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def body_limit(request: HttpRequest) -> int | None:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return None
    if request.META.get("CONTENT_TYPE", "").lower().startswith("multipart/form-data"):
        return limit + MULTIPART_FILES * settings.FLUXWEB_MAX_UPLOAD_BYTES
    return limit


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


def is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def page(status: int, title: str, message: str) -> HttpResponse:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · FluxWeb</title>'
        f"</head><body><h1>{escape(title)}</h1><p>{escape(message)}</p>"
        '<p><a href="/">Back to the studio</a></p></body></html>'
    )
    return HttpResponse(html, status=status, content_type="text/html; charset=utf-8")


def api_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def too_large(request: HttpRequest) -> HttpResponse:
    limit = body_limit(request)
    message = "The request is too large" + (f": the limit is {megabytes(limit)}." if limit else ".")
    if is_api(request):
        return api_error(413, "too_large", message)
    return page(413, "Request too large", message + " Go back and send less (smaller or fewer images).")


def bad_request(request: HttpRequest, message: str) -> HttpResponse:
    if is_api(request):
        return api_error(400, "invalid", message)
    return page(400, "Bad request", message)


class RequestLimitsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = self.refuse(request)
        response = refusal or self.get_response(request)
        if is_api(request):
            response = self.as_json(response)
        return response

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return bad_request(request, "The Content-Length header is not a number.")
        limit = body_limit(request)
        if limit is not None and length > limit:
            return too_large(request)
        if any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()):
            return bad_request(request, "The query string holds a NUL character.")
        if "\x00" in request.path:  # /hooks/%00: a path segment reaches a text column as it is
            return bad_request(request, "The address holds a NUL character.")
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, RequestDataTooBig):
            return too_large(request)
        return None

    @staticmethod
    def as_json(response: HttpResponse) -> HttpResponse:
        """An error answered on /api/ by anything but the API (Django's 400 or 500 page) in the JSON shape."""
        if response.status_code < 400 or response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        code = CODES.get(status, "server_error" if status >= 500 else "error")
        message = "The server failed to answer; the error was logged." if status >= 500 else None
        converted = api_error(status, code, message or f"The request was refused ({status}).")
        for header in ("Allow", "Retry-After"):
            if header in response:
                converted[header] = response[header]
        return converted


log = logging.getLogger("generations.busy")
# Pauses before each retry of a request that found SQLite's one write lock taken past the busy timeout.
RETRY_PAUSES = (0.1, 0.3, 0.8, 1.5)
# Views that may run twice: a provider's webhook is only a hint to poll, checked against the job's state.
REPEATABLE_VIEWS = {"webhook"}


def is_locked(error: BaseException) -> bool:
    return isinstance(error, OperationalError) and "locked" in str(error) and connection.vendor == "sqlite"


def repeatable(request: HttpRequest) -> bool:
    """A request that changes nothing, a webhook, or an API create carrying an Idempotency-Key (a second
    run returns the first job): running it again after a rolled-back attempt is safe."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return True
    match = request.resolver_match
    if match is not None and match.url_name in REPEATABLE_VIEWS:
        return True
    return is_api(request) and request.method == "POST" and bool(request.headers.get("Idempotency-Key"))


def busy(request: HttpRequest) -> HttpResponse:
    message = "FluxWeb is busy right now and did not finish the request. Try again in a moment."
    response = api_error(503, "busy", message) if is_api(request) else page(503, "Busy", message)
    response["Retry-After"] = "2"
    return response


class DatabaseBusyMiddleware:
    """SQLite has one write lock; a writer waits the busy timeout (20 s) for it and then fails with
    "database is locked" (issue 10, bug 4: 2 creates and 2 webhooks answered 500 under 30 clients). A request
    safe to repeat is run again after a short jittered pause; any other answers 503 with Retry-After, its
    transaction rolled back. PostgreSQL waits on row locks instead and never gets here."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_locked(exception):
            return None
        match = request.resolver_match
        if match is not None and repeatable(request):
            for pause in RETRY_PAUSES:
                time.sleep(pause * random.uniform(0.5, 1.5))
                try:
                    return match.func(request, *match.args, **match.kwargs)
                except OperationalError as error:
                    if not is_locked(error):
                        raise
        log.warning("%s %s: the database stayed locked; answered 503", request.method, request.path)
        return busy(request)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's answer to a suspicious request, except a body too large to read, which is a 413."""
    if isinstance(exception, RequestDataTooBig):
        return too_large(request)
    if is_api(request):
        return api_error(400, "invalid", "The request is malformed.")
    return defaults.bad_request(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api(request):
        return api_error(500, "server_error", "The server failed to answer; the error was logged.")
    return page(500, "Something went wrong", "FluxWeb failed to answer; the error was logged. Try again.")
