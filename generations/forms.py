"""Input from the studio form and the JSON API, validated once, into a provider-neutral request."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.db import connection
from django.db.models import Sum

from . import media
from .catalog import model_ids
from .models import Generation, Image, Reference
from .providers import GenerationRequest, Unsupported
from .providers.base import parse_ratio

FORMAT_CHOICES = [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WebP")]
# The largest primary key the database can hold for the models whose ids users send (BigAutoField: 2**63-1
# on SQLite and PostgreSQL). A larger number matches nothing and must never reach a query.
MAX_ID = min(
    connection.ops.integer_field_range(model._meta.pk.get_internal_type())[1]
    for model in (Generation, Image, Reference)
)
ASCII_DIGITS = frozenset("0123456789")


def parse_id(value, minimum: int = 1) -> int | None:
    """A database id from user input, or None: an int (not a bool) or a string of ASCII digits only
    (`"²".isdigit()` is true, `int("²")` fails; `int("١٢")` is 12), within 1..MAX_ID (`minimum=0` for a
    cursor such as "newer than 0")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value or len(value) > len(str(MAX_ID)) or not set(value) <= ASCII_DIGITS:
            return None
        value = int(value)
    if not isinstance(value, int) or not minimum <= value <= MAX_ID:
        return None
    return value


def parse_ids(values, field: str, what: str) -> list[int]:
    """A list of ids, each checked by parse_id; anything else raises Unsupported naming the field."""
    if not isinstance(values, list | tuple):
        raise Unsupported(f"{field} must be a list of {what} ids.", field)
    ids = [parse_id(value) for value in values]
    if None in ids:
        bad = values[ids.index(None)]
        shown = repr(bad) if isinstance(bad, str) and bad.isprintable() and len(bad) <= 40 else "one item"
        raise Unsupported(f"{field} must be a list of {what} ids; {shown} is not one.", field)
    return ids


def is_text(value: str) -> bool:
    """True when `value` can be stored and sent: no lone surrogate (JSON's "\\ud800" decodes to one, and
    it fails later as UnicodeEncodeError in the database driver or the HTTP client)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_text(value) -> None:
    if isinstance(value, str) and not is_text(value):
        raise forms.ValidationError(
            "contains a character that is not valid text (a lone UTF-16 surrogate).", code="surrogate"
        )


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
        for field in self.fields.values():
            if isinstance(field, forms.CharField):
                field.validators = [*field.validators, validate_text]

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
    wanted = parse_ids(ids, "reference_images", "image")
    found = Image.objects.in_bulk(wanted)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise Unsupported(f"No image with id {missing[0]}.", "reference_images")
    return [found[i] for i in wanted]


def reference_uploads(ids, user) -> list[Reference]:
    """The user's own uploaded references, in the order given; another user's upload is unknown here."""
    if not ids:
        return []
    wanted = parse_ids(ids, "reference_uploads", "upload")
    found = Reference.objects.filter(user=user).in_bulk(wanted)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise Unsupported(f"No upload with id {missing[0]}.", "reference_uploads")
    return [found[i] for i in wanted]


def clean_idempotency_key(key: str) -> str | None:
    """An Idempotency-Key as given (the studio's hidden field or the API header), or None when it is not one
    we can store: longer than 255 characters, or holding a control character such as NUL."""
    if len(key) > 255 or not key.isprintable() or not is_text(key):
        return None
    return key


def upload_storage_used(user) -> int:
    """Bytes the user's reference uploads take in storage."""
    return Reference.objects.filter(user=user).aggregate(used=Sum("bytes"))["used"] or 0


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


def check_upload_storage(user, incoming: int) -> None:
    """Refuse uploads of `incoming` bytes that would take the user's references past
    FLUXWEB_MAX_UPLOAD_STORAGE_BYTES (MediaError "storage_full")."""
    limit = settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES
    used = upload_storage_used(user)
    if used + incoming > limit:
        raise media.MediaError(
            "storage_full",
            f"Your reference uploads already take {megabytes(used)} of the {megabytes(limit)} each member "
            f"may keep; {megabytes(incoming)} more would pass the limit.",
        )


def discard_uploads(uploads: list[Reference]) -> None:
    """Delete uploads made by a request whose create was refused: their files and their rows."""
    for upload in uploads:
        upload.file.delete(save=False)
        upload.delete()
