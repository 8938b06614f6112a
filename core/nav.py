"""The portal navigation: one list, each entry a URL name that may not exist yet.

Apps add their portal pages on their own schedule, so an entry whose URL name does not resolve is
simply left out (no ``{% url %}`` in the base template for a route that may be missing). To put a
page in the navigation, give its route one of these names, or add an entry here. Labels and
descriptions are translated (run ``make messages`` after changing them).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class NavEntry:
    key: str
    label: str | Promise
    url_name: str
    description: str | Promise
    group: str = ""  # "" for the top level, else a key of GROUP_LABELS


GROUP_LABELS: dict[str, str | Promise] = {"provider": _("Provider")}

NAV: list[NavEntry] = [
    NavEntry("market", _("Market"), "marketplace:market", _("Find the cheapest device that fits your job.")),
    NavEntry("orders", _("Orders"), "marketplace:orders", _("Your orders, running jobs and their logs.")),
    NavEntry("volumes", _("Volumes"), "marketplace:volumes", _("Persistent disk space your jobs mount.")),
    NavEntry("billing", _("Billing"), "billing:wallet", _("Wallet balance, top-ups, usage and invoices.")),
    NavEntry(
        "spend",
        _("Spend controls"),
        "marketplace:spend_settings",
        _("Monthly cap, low-balance e-mail and webhooks."),
    ),
    NavEntry("nodes", _("Nodes"), "marketplace:nodes", _("Join nodes and watch their health."), "provider"),
    NavEntry(
        "pricing", _("Pricing"), "marketplace:pricing", _("Set your prices per device-hour."), "provider"
    ),
    NavEntry(
        "earnings", _("Earnings"), "billing:earnings", _("Earnings, statements and payouts."), "provider"
    ),
    NavEntry("keys", _("API keys"), "apikey_list", _("Keys for the REST API and the suanli CLI.")),
]


@dataclass(frozen=True)
class NavLink:
    key: str
    label: str | Promise
    url: str
    description: str | Promise
    current: bool


@dataclass(frozen=True)
class NavSection:
    key: str
    label: str | Promise  # "" for ungrouped links
    links: list[NavLink]


def nav_sections(request: HttpRequest) -> list[NavSection]:
    """The entries whose routes exist, grouped in order, the current page marked."""
    sections: list[NavSection] = []
    for entry in NAV:
        try:
            url = reverse(entry.url_name)
        except NoReverseMatch:
            continue
        link = NavLink(
            key=entry.key,
            label=entry.label,
            url=url,
            description=entry.description,
            current=request.path == url or (url != "/" and request.path.startswith(url)),
        )
        if sections and sections[-1].key == entry.group:
            sections[-1].links.append(link)
        else:
            sections.append(
                NavSection(key=entry.group, label=GROUP_LABELS.get(entry.group, ""), links=[link])
            )
    return sections
