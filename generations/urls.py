from django.urls import path

from . import views, webhooks

urlpatterns = [
    path("", views.studio, name="studio"),
    path("studio/options", views.model_options, name="model-options"),
    path("studio/quote", views.quote, name="quote"),
    path("generate", views.generate, name="generate"),
    path("jobs/<int:pk>/card", views.job_card, name="job-card"),
    path("jobs/<int:pk>/cancel", views.cancel, name="cancel"),
    path("jobs/<int:pk>/", views.generation_page, name="generation"),
    path("gallery", views.gallery, name="gallery"),
    path("credits/", views.credits_page, name="credits"),
    path("credits/badge", views.credit_badge, name="credit-badge"),
    path("images/<int:pk>/file", views.image, {"variant": "file"}, name="image-file"),
    path("images/<int:pk>/thumbnail", views.image, {"variant": "thumbnail"}, name="image-thumbnail"),
    path("r/<str:token>", views.reference, name="reference"),
    path("r/u/<str:token>", views.reference_upload, name="reference-upload"),
    path("studio/reference/<int:pk>", views.reference_chip, name="reference-chip"),
    path("hooks/<str:token>", webhooks.receive, name="webhook"),
]
