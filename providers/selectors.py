"""Provider reads."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from core.errors import Forbidden, NotFound, ValidationFailed
from providers.models import Node, NodeStatus, Provider


def providers_of_member(*, user: User) -> QuerySet[Provider]:
    return Provider.objects.filter(memberships__user_id=user.pk)


def provider_for_member(*, user: User, provider_id: int | None) -> Provider:
    """The provider a member acts for: the one named, or their only one.

    Raises ``Forbidden`` when the user is not a member of it, ``ValidationFailed`` when they
    belong to several and named none.
    """
    mine = providers_of_member(user=user)
    if provider_id is not None:
        provider = mine.filter(pk=provider_id).first()
        if provider is None:
            raise Forbidden(
                _("You are not a member of provider %(id)s.") % {"id": provider_id},
                fields={"provider": _("Not a member.")},
            )
        return provider
    candidates = list(mine[:2])
    if not candidates:
        raise Forbidden(_("You are not a member of any provider."))
    if len(candidates) > 1:
        raise ValidationFailed(
            _("You belong to several providers; say which one."),
            fields={"provider": _("You belong to several providers; say which one.")},
        )
    return candidates[0]


def nodes_for_member(*, user: User) -> QuerySet[Node]:
    return (
        Node.objects.filter(provider__memberships__user_id=user.pk)
        .select_related("provider")
        .prefetch_related("devices__accelerator")
    )


def node_get_for_member(*, user: User, node_id: int) -> Node:
    node = nodes_for_member(user=user).filter(pk=node_id).first()
    if node is None:
        raise NotFound(_("No such node."))
    return node


def node_ids_offline(*, among: list[int] | None = None) -> list[int]:
    """Ids of offline nodes (optionally only among ``among``): the marketplace's liveness input."""
    nodes = Node.objects.filter(status=NodeStatus.OFFLINE)
    if among is not None:
        nodes = nodes.filter(pk__in=among)
    return list(nodes.values_list("pk", flat=True))
