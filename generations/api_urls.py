from django.urls import path, re_path

from . import api

urlpatterns = [
    path("me", api.me, name="api-me"),
    path("models", api.models, name="api-models"),
    path("generations", api.generations, name="api-generations"),
    path("generations/<int:pk>", api.generation, name="api-generation"),
    path("generations/<int:pk>/cancel", api.cancel, name="api-cancel"),
    path("references", api.references, name="api-references"),
    path("references/<int:pk>", api.reference, name="api-reference"),
    path("images/<int:pk>/file", api.image_file, {"variant": "file"}, name="api-image-file"),
    path("images/<int:pk>/thumbnail", api.image_file, {"variant": "thumbnail"}, name="api-image-thumbnail"),
    re_path(r"^(?P<path>.*)$", api.not_found),
]
