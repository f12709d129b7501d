from django.contrib.auth import views as auth_views
from django.urls import path

from . import oidc, views

urlpatterns = [
    path("settings/", views.account_settings, name="account-settings"),
    path("settings/tokens", views.create_token, name="token-create"),
    path("settings/tokens/<int:pk>/revoke", views.revoke_token, name="token-revoke"),
    path("settings/preferences", views.save_preferences, name="preferences"),
    path("invite/<str:token>", views.accept_invitation, name="invitation"),
    path("oidc/authenticate/", oidc.SignIn.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.Callback.as_view(), name="oidc_authentication_callback"),
    path("sign-in-refused", oidc.sign_in_refused, name="sign-in-refused"),
    path(
        "password-reset/", views.passwords_on(auth_views.PasswordResetView.as_view()), name="password_reset"
    ),
    path("password-reset/sent", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "password-reset/<uidb64>/<token>",
        views.passwords_on(auth_views.PasswordResetConfirmView.as_view()),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"
    ),
]
