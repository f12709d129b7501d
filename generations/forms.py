"""Input from the studio form and the JSON API, validated once, into a provider-neutral request."""

from __future__ import annotations

from django import forms

from .catalog import model_ids
from .models import Image, Reference
from .providers import GenerationRequest, Unsupported
from .providers.base import parse_ratio

FORMAT_CHOICES = [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WebP")]


class GenerationForm(forms.Form):
    prompt = forms.CharField(
        max_length=5000, widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Describe the image"})
    )
    model = forms.ChoiceField(choices=())
    provider = forms.CharField(required=False)
    n = forms.IntegerField(min_value=1, max_value=10, initial=1, required=False)
    aspect_ratio = forms.CharField(required=False, initial="1:1")
    megapixels = forms.FloatField(min_value=0.1, max_value=16, required=False)
    width = forms.IntegerField(min_value=16, max_value=8192, required=False)
    height = forms.IntegerField(min_value=16, max_value=8192, required=False)
    seed = forms.IntegerField(min_value=0, max_value=2**63 - 1, required=False)
    output_format = forms.ChoiceField(choices=FORMAT_CHOICES, required=False, initial="jpeg")
    safety_tolerance = forms.IntegerField(min_value=0, max_value=6, required=False)
    prompt_upsampling = forms.BooleanField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(m, m) for m in model_ids()]

    def clean_aspect_ratio(self) -> str | None:
        ratio = self.cleaned_data.get("aspect_ratio") or None
        if ratio:
            try:
                parse_ratio(ratio)
            except Unsupported as exc:
                raise forms.ValidationError(exc.message) from None
        return ratio

    def to_request(
        self, reference_urls: tuple[str, ...] = (), reference_megapixels: tuple[float, ...] = ()
    ) -> GenerationRequest:
        data = self.cleaned_data
        return GenerationRequest(
            prompt=data["prompt"].strip(),
            model=data["model"],
            n=data.get("n") or 1,
            aspect_ratio=None if data.get("width") else (data.get("aspect_ratio") or "1:1"),
            width=data.get("width"),
            height=data.get("height"),
            megapixels=data.get("megapixels"),
            seed=data.get("seed"),
            output_format=data.get("output_format") or "jpeg",
            safety_tolerance=data.get("safety_tolerance"),
            prompt_upsampling=bool(data.get("prompt_upsampling")),
            reference_urls=reference_urls,
            reference_megapixels=reference_megapixels,
        )


def first_error(form: forms.Form) -> tuple[str, str]:
    """(field, message) of the first problem, for one clear line to the user."""
    for field, errors in form.errors.items():
        return (
            field,
            f"{field.replace('_', ' ').capitalize()}: {errors[0]}" if field != "__all__" else errors[0],
        )
    return "", "The request is not valid."


def reference_images(ids) -> list[Image]:
    """Gallery images picked as references, in the order given; unknown ids raise Unsupported."""
    if not ids:
        return []
    if not isinstance(ids, list | tuple) or not all(isinstance(i, int) or str(i).isdigit() for i in ids):
        raise Unsupported("reference_images must be a list of image ids.", "reference_images")
    found = Image.objects.in_bulk([int(i) for i in ids])
    missing = [i for i in ids if int(i) not in found]
    if missing:
        raise Unsupported(f"No image with id {missing[0]}.", "reference_images")
    return [found[int(i)] for i in ids]


def reference_uploads(ids, user) -> list[Reference]:
    """The user's own uploaded references, in the order given."""
    if not ids:
        return []
    if not isinstance(ids, list | tuple) or not all(isinstance(i, int) or str(i).isdigit() for i in ids):
        raise Unsupported("reference_uploads must be a list of upload ids.", "reference_uploads")
    found = Reference.objects.filter(user=user).in_bulk([int(i) for i in ids])
    missing = [i for i in ids if int(i) not in found]
    if missing:
        raise Unsupported(f"No upload with id {missing[0]}.", "reference_uploads")
    return [found[int(i)] for i in ids]
