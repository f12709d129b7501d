"""`{% gallery_section %}`: the team gallery as the studio shows it, rendered by generations.gallery so
the studio view needs no gallery context of its own."""

from django import template
from django.utils.safestring import mark_safe

register = template.Library()


@register.simple_tag(takes_context=True)
def gallery_section(context) -> str:
    from generations import gallery

    return mark_safe(gallery.studio_section(context["request"]))  # noqa: S308 (a rendered template)
