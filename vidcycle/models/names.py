"""The one x2y naming rule: what a model name says about its two domains and its reverse direction."""

import re

_DIRECTION = re.compile(r"(.*?)([A-Za-z]+)2([A-Za-z]+)(.*)")


def reverse_name(name: str) -> str | None:
    """The name of the opposite direction, by the one x2y rule: domains are the letter runs around the
    first '2' that has letters on both sides; what comes before and after stays. 'photo2monet_v2' ->
    'monet2photo_v2', 'demo-summer2winter' -> 'demo-winter2summer'; None without such a '2'."""
    match = _DIRECTION.fullmatch(name)
    return f"{match[1]}{match[3]}2{match[2]}{match[4]}" if match else None


def name_domains(name: str) -> tuple[str, str] | None:
    """The two domains a name spells by the same rule: 'photo2monet_v2' -> ('photo', 'monet')."""
    match = _DIRECTION.fullmatch(name)
    return (match[2], match[3]) if match else None


def pair_names(name: str | None, reverse: str | None, x_domain: str, y_domain: str) -> dict:
    """Store and domain names of a pair. Without a name: '<x>2<y>' and '<y>2<x>' from the domains given
    (the input folders' names). A name spelling x2y sets the domains and, unless given, the reverse;
    a name without one keeps the given domains and reverses as NAME-reverse."""
    if not name:
        return {"name": f"{x_domain}2{y_domain}", "reverse_name": reverse or f"{y_domain}2{x_domain}",
                "x_domain": x_domain, "y_domain": y_domain}
    x_domain, y_domain = name_domains(name) or (x_domain, y_domain)
    reverse = reverse or reverse_name(name) or f"{name}-reverse"
    return {"name": name, "reverse_name": reverse, "x_domain": x_domain, "y_domain": y_domain}
