"""`{% gallery_section %}`: the team gallery as the studio shows it, rendered by generations.gallery so
the studio view needs no gallery context of its own."""

from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def gallery_section(context) -> str:
    from generations import gallery

    return gallery.studio_section(context["request"])  # rendered and escaped by its own template: safe
