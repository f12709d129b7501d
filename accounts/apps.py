from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Team accounts"

    def ready(self) -> None:
        from . import signals  # noqa: F401
