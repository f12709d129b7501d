"""Input from the studio form and the JSON API, validated once, into a provider-neutral request."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.db import connection
from django.db.models import Sum

from . import catalog, media
from .catalog import NAMES, model_ids
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
    # Lists of ids: the studio sends one input per id, the API a JSON array (MultipleHiddenInput reads both).
    reference_images = forms.Field(required=False, widget=forms.MultipleHiddenInput)
    reference_uploads = forms.Field(required=False, widget=forms.MultipleHiddenInput)

    def __init__(self, data=None, *args, user=None, **kwargs):
        super().__init__(data, *args, **kwargs)
        self.user = user
        self.fields["model"].choices = [(m, m) for m in model_ids()]
        for field in self.fields.values():
            if isinstance(field, forms.CharField):
                field.validators = [*field.validators, validate_text]

    def clean_reference_images(self) -> list[Image]:
        """The gallery images picked as references, each once (a second pick would be charged twice)."""
        try:
            return reference_images(unique(self.cleaned_data.get("reference_images")))
        except Unsupported as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_reference_uploads(self) -> list[Reference]:
        """The user's own uploads; another member's upload id is unknown here."""
        try:
            return reference_uploads(unique(self.cleaned_data.get("reference_uploads")), self.user)
        except Unsupported as exc:
            raise forms.ValidationError(exc.message) from None

    def clean(self) -> dict:
        data = super().clean()
        model, n = data.get("model"), data.get("n") or 1
        if model and n > 1 and not self.has_error("n"):
            # The field's own bound (10) is no provider's: name the limit of the accounts this form can use,
            # and the account the user picked, never one they did not.
            accounts = catalog.accounts_serving(model)
            picked = data.get("provider")
            chosen = [a for a in accounts if a.slug == picked] if picked else accounts
            if chosen:
                most = max(a.adapter_class.models[model].max_n for a in chosen)
                if n > most:
                    where = f"on {picked}" if picked else "on any provider serving it"
                    self.add_error(
                        "n", f"{NAMES.get(model, model)} makes at most {most} image{pluralize(most)} {where}."
                    )
        return data

    def clean_aspect_ratio(self) -> str | None:
        ratio = self.cleaned_data.get("aspect_ratio") or None
        if ratio:
            try:
                parse_ratio(ratio)
            except Unsupported as exc:
                raise forms.ValidationError(exc.message) from None
        return ratio

    def to_request(self, extra_uploads: list[Reference] | tuple = ()) -> GenerationRequest:
        """The provider-neutral request this valid form describes, references included (with `extra_uploads`:
        files the studio stored for this submit). The studio, its price, a retry and the API all build their
        request here, so what is quoted is what is held."""
        data = self.cleaned_data
        reference_urls, reference_megapixels = media.reference_keys(
            data.get("reference_images") or [], [*(data.get("reference_uploads") or []), *extra_uploads]
        )
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


def unique(values) -> list:
    """A list field's value: nothing given is an empty list; anything else is left for parse_ids to check."""
    return [] if values is None or values == "" else values


def pluralize(count: int) -> str:
    return "" if count == 1 else "s"


def first_error(form: forms.Form) -> tuple[str, str]:
    """(field, message) of the first problem, for one clear line to the user."""
    for field, errors in form.errors.items():
        return (field, labelled(field, errors[0]))
    return "", "The request is not valid."


def labelled(field: str, message: str) -> str:
    """A field's error as one line that names the field, unless the message already speaks for itself."""
    if field in ("__all__", "n", *REFERENCE_FIELDS):
        return message
    return f"{field.replace('_', ' ').capitalize()}: {message}"


def field_errors(form: forms.Form) -> dict[str, str]:
    """Each field's first error, shown beside the field."""
    return {field: errors[0] for field, errors in form.errors.items() if field != "__all__"}


REFERENCE_FIELDS = ("reference_images", "reference_uploads")


def reference_images(ids) -> list[Image]:
    """Gallery images picked as references, in the order given; unknown ids raise Unsupported."""
    if not ids:
        return []
    wanted = list(dict.fromkeys(parse_ids(ids, "reference_images", "image")))  # each image once
    found = Image.objects.visible().in_bulk(wanted)  # a deleted image is no one's to pick
    missing = [i for i in wanted if i not in found]
    if missing:
        raise Unsupported(f"No image with id {missing[0]}.", "reference_images")
    return [found[i] for i in wanted]


def reference_uploads(ids, user) -> list[Reference]:
    """The user's own uploaded references, in the order given; another user's upload is unknown here."""
    if not ids:
        return []
    wanted = list(dict.fromkeys(parse_ids(ids, "reference_uploads", "upload")))
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
