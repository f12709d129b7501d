from django.apps import AppConfig


class GenerationsConfig(AppConfig):
    name = "generations"
    verbose_name = "FluxWeb"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the credit account to user creation)
