from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path

from accounts import views as account_views

from . import health


def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    """Browsers ask /favicon.ico of pages that name none (an image opened on its own)."""
    return HttpResponsePermanentRedirect(static("fluxweb/favicon.svg"))


urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("favicon.ico", favicon),
    path("login/", account_views.LogIn.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("generations.api_urls")),
    path("account/", include("accounts.urls")),
    path("", include("generations.urls")),
]

handler400 = "fluxweb.middleware.handler400"
handler500 = "fluxweb.middleware.handler500"
