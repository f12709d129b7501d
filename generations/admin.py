from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import Count, Sum
from django.http import HttpResponse, HttpResponseForbidden, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.http import urlencode

from accounts import audit
from accounts.audit import AuditedAdmin, ReadOnlyAdmin

from . import credits, engine, usage
from .models import (
    ApiToken,
    Collection,
    CollectionItem,
    CreditAccount,
    Generation,
    GenerationEvent,
    Image,
    LedgerEntry,
    Price,
    Prompt,
    ProviderAccount,
    Quota,
    Usage,
)
from .providers import ProviderError
from .providers import http as provider_http
from .refusal import Refusal


class ProviderAccountForm(forms.ModelForm):
    base_url = forms.URLField(max_length=500, assume_scheme="https")
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )

    class Meta:
        model = ProviderAccount
        fields = [
            "slug",
            "kind",
            "base_url",
            "api_key",
            "enabled",
            "priority",
            "monthly_spend_cap",
            "max_rpm",
            "result_hosts",
        ]

    def clean(self):
        cleaned = super().clean()
        has_key = bool(cleaned.get("api_key")) or (self.instance.pk is not None and self.instance.has_key)
        if cleaned.get("enabled") and not has_key:
            # Saved enabled with no key, the account was offered to members and every job on it failed.
            self.add_error("enabled", "An account needs an API key before it can be enabled.")
        return cleaned

    def save(self, commit=True):
        account = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            account.set_api_key(self.cleaned_data["api_key"])
        if commit:
            account.save()
        return account


@admin.register(ProviderAccount)
class ProviderAccountAdmin(AuditedAdmin, admin.ModelAdmin):
    form = ProviderAccountForm
    audit_action, audit_hidden = "provider", ("api_key_encrypted",)
    list_display = [
        "slug",
        "kind",
        "base_url",
        "enabled",
        "priority",
        "key_hint",
        "spent_this_month",
        "requests_per_minute",
        "health",
        "recent_latency",
        "recent_error_rate",
        "waiting_for_admin",
    ]
    list_editable = ["enabled", "priority"]
    actions = ["test_connection"]
    # The changelist's editable-row form is built from the model: say the scheme here too (Django 6 default).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def has_module_permission(self, request):
        return request.user.is_superuser

    has_view_permission = has_change_permission = has_add_permission = has_delete_permission = (
        lambda self, request, obj=None: request.user.is_superuser
    )

    @admin.display(description="key")
    def key_hint(self, account):
        if not account.has_key:
            return "not set"
        return f"…{account.key_last4}" if account.key_last4 else "set"  # a short key shows nothing of itself

    @admin.display(description="charged this month")
    def spent_this_month(self, account):
        usage = Usage.objects.filter(
            account=account, user=None, window=credits.month_window(timezone.now())
        ).first()
        return usage.credits if usage else 0

    def get_urls(self):
        allow = path(
            "allow-host/<int:generation_id>/",
            self.admin_site.admin_view(self.allow_host_view),
            name="generations_provideraccount_allow_host",
        )
        return [allow, *super().get_urls()]

    @admin.display(description="waiting for an admin")
    def waiting_for_admin(self, account):
        """Jobs the provider finished (and charged for) whose result host is not allowed: one button each
        allows the host for this account and downloads again. The button posts the changelist's own form
        (its CSRF token) to the allow view: a form may not sit inside another."""
        waiting = Generation.objects.filter(account=account, status=Generation.Status.RUNNING).exclude(
            refused_host=""
        )
        return (
            format_html_join(
                " ",
                '<span class="waiting">#{} on {} <button type="submit" formmethod="post" formaction="{}">'
                "Allow this host and fetch again</button></span>",
                (
                    (
                        g.pk,
                        g.refused_host,
                        reverse("admin:generations_provideraccount_allow_host", args=[g.pk]),
                    )
                    for g in waiting.order_by("pk")[:20]
                ),
            )
            or "-"
        )

    def allow_host_view(self, request, generation_id: int):
        if request.method != "POST" or not self.has_change_permission(request):
            return HttpResponseNotAllowed(["POST"]) if request.method != "POST" else HttpResponseForbidden()
        generation = get_object_or_404(Generation.objects.select_related("account"), pk=generation_id)
        host = generation.refused_host
        with transaction.atomic():
            before = generation.account.result_hosts
            moved = bool(host) and engine.allow_host_and_fetch(generation, host)
            if moved and generation.account.result_hosts != before:
                audit.record(
                    request.user,
                    "provider.change",
                    generation.account,
                    before={"result_hosts": before},
                    after={"result_hosts": generation.account.result_hosts},
                    note=f"allowed {host} for generation {generation.pk}",
                )
        if moved:
            self.message_user(
                request,
                f"{host} is now allowed for {generation.account.slug}; generation {generation.pk} is "
                "downloading again.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                f"Generation {generation.pk} is no longer waiting for a host ({generation.status}).",
                messages.WARNING,
            )
        return redirect("admin:generations_provideraccount_changelist")

    @admin.display(description="requests/min")
    def requests_per_minute(self, account):
        return f"{account.budget}" + ("" if account.max_rpm else " (default)")

    @admin.display(description="breaker")
    def health(self, account):
        now = timezone.now()
        state = account.breaker_state(now)
        if state == "open":
            state += f" ({(account.breaker_open_until - now).total_seconds():.0f} s left)"
        if account.paused_until and account.paused_until > now:
            state += f"; paused by a 429 ({(account.paused_until - now).total_seconds():.0f} s)"
        return state

    @admin.display(description="latency")
    def recent_latency(self, account):
        return "-" if account.latency_ms is None else f"{account.latency_ms:.0f} ms"

    @admin.display(description="errors")
    def recent_error_rate(self, account):
        return f"{account.error_rate:.0%}"

    @admin.action(description="Test connection (one cheap authenticated call)")
    def test_connection(self, request, queryset):
        for account in queryset:
            try:
                adapter = account.adapter()
                adapter.parse_check(provider_http.send(adapter, adapter.build_check(), timeout=10))
            except ProviderError as error:
                self.message_user(request, f"{account.slug}: {error.message}", messages.ERROR)
            except Exception as error:  # a decrypt failure or a bad URL: say it, don't crash the admin
                self.message_user(request, f"{account.slug}: {error}", messages.ERROR)
            else:
                self.message_user(request, f"{account.slug}: connected, key accepted.", messages.SUCCESS)


class EventInline(admin.TabularInline):
    model = GenerationEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "what", "detail"]

    def has_add_permission(self, request, obj=None):
        return False  # the timeline is what happened; no one adds to it by hand


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "user",
        "model",
        "account",
        "status",
        "credits_reserved",
        "credits_charged",
        "credits_refunded",
        "provider_cost",
        "created_at",
    ]
    list_filter = ["status", "model", "account"]
    search_fields = ["prompt__text", "provider_job_id", "user__username"]
    list_select_related = ["user", "account"]
    inlines = [EventInline]
    readonly_fields = [f.name for f in Generation._meta.fields]

    def has_add_permission(self, request):
        return False

    def get_urls(self):
        extra = [path("usage/", self.admin_site.admin_view(self.usage_view), name="generations_usage")]
        return extra + super().get_urls()

    def usage_view(self, request):
        """Spend per day by member, provider account and model over a chosen range (the last 30 days by
        default), FluxWeb's charge beside what the provider reported, differences flagged; `?format=csv`
        gives the same rows as a file."""
        # Everyone's spend: for those who may read the ledger, not any staff member.
        if not request.user.has_perm("generations.view_ledgerentry"):
            raise PermissionDenied
        try:
            start, end = usage.parse_range(request.GET)
        except Refusal as error:
            if request.GET.get("format") == "csv":
                return HttpResponse(str(error), status=400, content_type="text/plain; charset=utf-8")
            context = {**self.usage_context(request), "error": str(error), "query": request.GET}
            return render(request, "admin/usage.html", context, status=400)
        found = usage.rows(start, end)
        if request.GET.get("format") == "csv":
            response = HttpResponse(usage.as_csv(found), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="fluxweb-usage-{start}-{end}.csv"'
            return response
        context = {
            **self.usage_context(request),
            "title": f"Usage {start:%Y-%m-%d} to {end:%Y-%m-%d}",
            "start": start,
            "end": end,
            "rows": found,
            "flagged": sum(1 for row in found if row.difference),
            "day_chart": usage.day_chart(found, start, end),
            "charts": [
                ("By member", usage.bar_chart(usage.totals(found, "member"))),
                ("By provider account", usage.bar_chart(usage.totals(found, "provider"))),
                ("By model", usage.bar_chart(usage.totals(found, "model"))),
            ],
            "total_charged": sum(row.charged for row in found),
            "csv_query": urlencode({"start": start, "end": end, "format": "csv"}),
        }
        return render(request, "admin/usage.html", context)

    def usage_context(self, request) -> dict:
        return {**self.admin_site.each_context(request), "title": "Usage", "opts": self.model._meta}


class GrantForm(forms.Form):
    amount = forms.IntegerField(help_text="Credits; negative to take back (an adjust entry).")
    note = forms.CharField(max_length=500)


@admin.register(CreditAccount)
class CreditAccountAdmin(admin.ModelAdmin):
    list_display = ["user", "available", "reserved", "balance", "charged_this_month", "images_today"]
    search_fields = ["user__username"]
    readonly_fields = ["user", "balance", "reserved"]
    actions = ["grant_credits"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # Credits leave through the ledger (an adjust entry, audited), never with the row: only an empty
        # account may go (deleting its user takes it along), one at a time.
        return obj is not None and obj.balance == 0 and obj.reserved == 0

    @admin.display(description="charged this month")
    def charged_this_month(self, account):
        start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (
            LedgerEntry.objects.filter(user=account.user_id, kind="settle", created_at__gte=start).aggregate(
                total=Sum("amount")
            )["total"]
            or 0
        )

    @admin.display(description="images today")
    def images_today(self, account):
        usage = Usage.objects.filter(
            user=account.user_id, account=None, window=credits.day_window(timezone.now())
        ).first()
        return usage.images if usage else 0

    @admin.action(description="Grant or adjust credits (with a note)")
    def grant_credits(self, request, queryset):
        form = GrantForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            amount, note = form.cleaned_data["amount"], form.cleaned_data["note"]
            moved = 0
            for account in queryset.select_related("user"):
                try:
                    if amount > 0:
                        credits.grant(account.user, amount, admin=request.user, note=note)
                    else:
                        credits.adjust(account.user, amount, admin=request.user, note=note)
                except ValueError as error:
                    self.message_user(request, str(error), messages.ERROR)
                else:
                    moved += 1
            if moved:  # a refusal alone must not read as done
                self.message_user(request, f"{amount:+} credits for {moved} user(s).", messages.SUCCESS)
            return redirect(request.get_full_path())
        return render(
            request,
            "admin/grant_credits.html",
            {
                **self.admin_site.each_context(request),
                "form": form,
                "accounts": queryset,
                "opts": self.model._meta,
            },
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["created_at", "user", "kind", "amount", "generation", "admin", "note"]
    list_filter = ["kind", "created_at", ("admin", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__username", "note"]
    list_select_related = ["user", "admin", "generation"]


@admin.register(Price)
class PriceAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_action = "price"
    list_display = ["kind", "model", "tier", "credits", "effective_from"]
    list_filter = ["kind", "model"]


@admin.register(Quota)
class QuotaAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_action = "quota"
    list_display = ["__str__", "concurrent", "daily_images", "monthly_credits"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Adding a token issues one (only its digest is kept) and shows it once, as `apitoken create` does; a
    plain save stored an empty digest, and a second one broke the unique digest with a 500."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at"]

    def get_fields(self, request, obj=None):
        return ["user", "name"] if obj is None else ["user", "name", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        issued, token = ApiToken.issue(obj.user, name=obj.name)
        obj.pk, obj.digest, obj.prefix = issued.pk, issued.digest, issued.prefix
        obj._state.adding = False
        self.message_user(
            request,
            f"Token for {obj.user}, shown this once (only its digest is kept): {token}",
            messages.WARNING,
        )


admin.site.register(Prompt, search_fields=["text"], list_display=["__str__", "uses", "last_used_at"])


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("yes", "Deleted"), ("no", "Not deleted")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(deleted_at=None)
        if self.value() == "no":
            return queryset.filter(deleted_at=None)
        return queryset


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    """Every image, the soft-deleted included: members delete their own images from the gallery (the row
    and its files stay), an admin finds them under "deleted" and restores them."""

    list_display = ["id", "generation", "user", "model", "account", "format", "created_at", "deleted_at"]
    list_filter = [DeletedFilter, "format", "model", "account"]
    list_select_related = ["generation", "user", "account"]
    search_fields = ["prompt__text", "user__username"]
    readonly_fields = [f.name for f in Image._meta.fields]
    actions = ["restore"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Restore the selected deleted images")
    def restore(self, request, queryset):
        restored = queryset.exclude(deleted_at=None).update(deleted_at=None, deleted_by=None)
        self.message_user(request, f"Restored {restored} image(s).", messages.SUCCESS)


class CollectionItemInline(admin.TabularInline):
    model = CollectionItem
    extra = 0
    raw_id_fields = ["image"]
    readonly_fields = ["added_by", "added_at"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "images", "created_by", "created_at", "updated_at"]
    list_select_related = ["created_by"]
    search_fields = ["name"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    inlines = [CollectionItemInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(image_count=Count("items"))

    @admin.display(ordering="image_count")
    def images(self, collection) -> int:
        return collection.image_count

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_formset(self, request, form, formset, change):
        for item in formset.save(commit=False):
            if item.pk is None:
                item.added_by = request.user
            item.save()
        for item in formset.deleted_objects:
            item.delete()


admin.site.site_header = "FluxWeb admin"
