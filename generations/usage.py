"""The admin's usage dashboard (issue 10, item 6): spend per day by member, provider account and model over a
chosen range, FluxWeb's charge beside what the provider reported, as tables, server-drawn SVG charts and CSV.

Two aggregate queries whatever the range holds (one over generations, one over images); the provider's
cost is a text column as reported, so it is grouped by value in the database and added up here.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from .models import Generation, Image
from .providers import PROVIDERS
from .refusal import Refusal

DEFAULT_DAYS = 30
MAX_DAYS = 366
# A difference worth a look: more than this share of the charge, and more than a tenth of a cent.
TOLERANCE = Decimal("0.05")
CSV_FIELDS = [
    "day",
    "member",
    "provider",
    "kind",
    "model",
    "jobs",
    "failed",
    "images",
    "charged_credits",
    "refunded_credits",
    "charged_usd",
    "provider_cost",
    "provider_cost_unit",
    "provider_usd",
    "difference",
    "provider_charged_no_image",
]


def cost_unit(kind: str) -> str:
    """What the cost a provider of `kind` reports is counted in (its adapter's `cost_unit`), or nothing."""
    adapter = PROVIDERS.get(kind)
    return adapter.cost_unit if adapter is not None else ""


def unit_usd(kind: str) -> Decimal | None:
    """US dollars per unit of that cost, where the provider publishes it (its adapter's `cost_unit_usd`):
    only those rows can be compared with FluxWeb's charge."""
    adapter = PROVIDERS.get(kind)
    value = adapter.cost_unit_usd if adapter is not None else None
    return Decimal(value) if value is not None else None


def parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise Refusal(
            "invalid", f"The {name} date must look like 2026-12-31, not {value[:40]!r}.", field=name
        ) from None


def parse_range(query, today: date | None = None) -> tuple[date, date]:
    """The first and last day (both included) the query asks for: `start` and `end` as YYYY-MM-DD, by
    default the last DEFAULT_DAYS days up to today. A Refusal says in words what is wrong."""
    today = today or timezone.localdate()
    end = parse_day(query["end"], "end") if query.get("end", "").strip() else today
    if query.get("start", "").strip():
        start = parse_day(query["start"], "start")
    else:
        start = end - timedelta(days=DEFAULT_DAYS - 1)
    if end < start:
        raise Refusal("invalid", f"The end date ({end}) is before the start date ({start}).", field="end")
    if (end - start).days + 1 > MAX_DAYS:
        raise Refusal(
            "invalid", f"Choose at most {MAX_DAYS} days; {start} to {end} is {(end - start).days + 1}."
        )
    return start, end


def add_costs(values) -> Decimal:
    total = Decimal(0)
    for value, count in values:
        try:
            total += Decimal(value) * count
        except (InvalidOperation, TypeError):
            continue
    return total


@dataclass
class Row:
    day: date
    member: str
    provider: str
    kind: str
    model: str
    jobs: int = 0
    failed: int = 0
    images: int = 0
    charged: int = 0
    refunded: int = 0
    # Jobs the provider finished (and charged for) that kept no image: a result host no admin allowed, a
    # download that never worked (issue 9.2).
    paid_no_image: int = 0
    costs: list = field(default_factory=list)  # (reported value, jobs) pairs

    @property
    def charged_usd(self) -> Decimal:
        return (Decimal(self.charged) * Decimal(settings.FLUXWEB_CREDIT_USD)).quantize(Decimal("0.001"))

    @property
    def reported(self) -> bool:
        return bool(self.costs)

    @property
    def provider_cost(self) -> Decimal | None:
        return add_costs(self.costs) if self.costs else None

    @property
    def cost_unit(self) -> str:
        return cost_unit(self.kind)

    @property
    def provider_usd(self) -> Decimal | None:
        rate = unit_usd(self.kind)
        if self.provider_cost is None or rate is None:
            return None
        return (self.provider_cost * rate).quantize(Decimal("0.001"))

    @property
    def difference(self) -> str:
        """Why this row needs a look, in words; empty when FluxWeb's charge and the provider's agree."""
        cost = self.provider_cost
        if cost is not None and cost > 0 and self.charged == 0:
            return "provider billed jobs FluxWeb refunded"
        usd = self.provider_usd
        if usd is None:
            return ""
        gap = abs(usd - self.charged_usd)
        if gap > Decimal("0.001") and gap > self.charged_usd * TOLERANCE:
            return f"provider ${usd} vs charged ${self.charged_usd}"
        return ""


def rows(start: date, end: date) -> list[Row]:
    """One Row per day, member, provider account and model with any generation created that day."""
    zone = timezone.get_current_timezone()
    since = timezone.make_aware(datetime.combine(start, time.min), zone)
    until = timezone.make_aware(datetime.combine(end + timedelta(days=1), time.min), zone)
    keys = ("day", "user__username", "account__slug", "account__kind", "model")
    found: dict[tuple, Row] = {}
    generations = (
        Generation.objects.filter(created_at__gte=since, created_at__lt=until)
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values(*keys, "provider_cost")
        .annotate(
            jobs=Count("id"),
            failed=Count("id", filter=Q(status=Generation.Status.FAILED)),
            charged=Sum("credits_charged"),
            refunded=Sum("credits_refunded"),
            paid_no_image=Count(
                "id", filter=Q(status=Generation.Status.FAILED, provider_done_at__isnull=False)
            ),
        )
        .order_by()
    )
    for group in generations:
        key = tuple(group[k] for k in keys)
        row = found.setdefault(key, Row(*key))
        row.jobs += group["jobs"]
        row.failed += group["failed"]
        row.charged += group["charged"] or 0
        row.refunded += group["refunded"] or 0
        row.paid_no_image += group["paid_no_image"]
        if group["provider_cost"]:
            row.costs.append((group["provider_cost"], group["jobs"]))
    images = (
        Image.objects.filter(generation__created_at__gte=since, generation__created_at__lt=until)
        .annotate(day=TruncDate("generation__created_at", tzinfo=zone))
        .values("day", "generation__user__username", "generation__account__slug", "generation__model")
        .annotate(total=Count("id"))
        .order_by()
    )
    counts = {
        (
            g["day"],
            g["generation__user__username"],
            g["generation__account__slug"],
            g["generation__model"],
        ): g["total"]
        for g in images
    }
    for (day, member, provider, _, model), row in found.items():
        row.images = counts.get((day, member, provider, model), 0)
    return sorted(found.values(), key=lambda r: (r.day, r.member, r.provider, r.model))


def as_csv(found: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in found:
        writer.writerow(
            [
                row.day.isoformat(),
                safe_cell(row.member),
                safe_cell(row.provider),
                row.kind,
                safe_cell(row.model),
                row.jobs,
                row.failed,
                row.images,
                row.charged,
                row.refunded,
                row.charged_usd,
                "" if row.provider_cost is None else row.provider_cost,
                row.cost_unit if row.reported else "",
                "" if row.provider_usd is None else row.provider_usd,
                row.difference,
                row.paid_no_image,
            ]
        )
    return out.getvalue()


def safe_cell(text: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (a username may begin with "=")."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def totals(found: list[Row], by: str) -> list[tuple[str, int, Decimal | None]]:
    """(name, charged credits, provider USD where comparable) per member, provider or model, largest first."""
    charged: dict[str, int] = defaultdict(int)
    usd: dict[str, Decimal] = {}
    for row in found:
        name = getattr(row, by)
        charged[name] += row.charged
        if row.provider_usd is not None:
            usd[name] = usd.get(name, Decimal(0)) + row.provider_usd
    return sorted(
        ((name, total, usd.get(name)) for name, total in charged.items()), key=lambda t: (-t[1], t[0])
    )


# -- charts: geometry only; templates/admin/usage.html draws it as SVG, coloured by CSS classes ------------------
WIDTH, HEIGHT, MARGIN = 720, 220, 40
SERIES = 8  # colour classes s0..s7; members past the seventh share the last, "others"


def day_chart(found: list[Row], start: date, end: date) -> dict:
    """Stacked bars: credits charged per day, one stack per member."""
    members = [name for name, _, _ in totals(found, "member")]
    shown = members[: SERIES - 1] + (["others"] if len(members) >= SERIES else [])
    series = {name: min(i, SERIES - 1) for i, name in enumerate(members)}
    days = (end - start).days + 1
    per_day: dict[date, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for row in found:
        per_day[row.day][series[row.member]] += row.charged
    peak = max((sum(stack.values()) for stack in per_day.values()), default=0) or 1
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    step = plot_w / days
    bars = []
    for i in range(days):
        day = start + timedelta(days=i)
        y = HEIGHT - MARGIN
        for index, credits in sorted(per_day.get(day, {}).items()):
            h = credits / peak * plot_h
            y -= h
            bars.append(
                {
                    "x": round(MARGIN + i * step + step * 0.1, 1),
                    "y": round(y, 1),
                    "w": round(step * 0.8, 1),
                    "h": round(h, 1),
                    "series": index,
                    "label": f"{day}: {credits} credits",
                }
            )
    ticks = [
        {"x": round(MARGIN + i * step + step / 2, 1), "label": f"{start + timedelta(days=i):%m-%d}"}
        for i in range(0, days, max(1, days // 8))
    ]
    # One line above the plot: a swatch, then the name.
    legend = [
        {"name": name, "series": i, "x": MARGIN + 90 * i, "text_x": MARGIN + 90 * i + 14}
        for i, name in enumerate(shown)
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "ticks": ticks,
        "legend": legend,
        "peak": peak,
        "base": HEIGHT - MARGIN,
        "top": MARGIN,
        "left": MARGIN,
        "right": WIDTH - MARGIN,
        "label_y": HEIGHT - MARGIN + 16,
    }


def bar_chart(items: list[tuple[str, int, Decimal | None]]) -> dict:
    """Horizontal bars: FluxWeb's charge in USD per name, the provider's USD beside it where comparable."""
    unit = Decimal(settings.FLUXWEB_CREDIT_USD)
    values = [(name, Decimal(charged) * unit, usd) for name, charged, usd in items]
    peak = max([v for _, c, u in values for v in (c, u or 0)] or [0]) or 1
    row_h, label_w, width = 34, 180, WIDTH
    bars = []
    for i, (name, charged, usd) in enumerate(values):
        y = 8 + i * row_h
        bars.append(
            {
                "name": name,
                "y": y,
                "text_y": y + 11,
                "charged_w": round(float(charged / peak) * (width - label_w - 90), 1),
                "charged": charged.quantize(Decimal("0.001")),
                "usd": None if usd is None else usd.quantize(Decimal("0.001")),
                "usd_y": y + 13,
                "usd_w": None if usd is None else round(float(usd / peak) * (width - label_w - 90), 1),
            }
        )
    return {"width": width, "height": 16 + row_h * len(values), "label_w": label_w, "bars": bars}
