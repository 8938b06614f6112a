"""Node-credential authentication for the agent API (``Authorization: Bearer nc_...``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from core.auth import credential_attempt_allow, credential_failure_record
from providers.models import Node
from providers.services import node_authenticate


class NodeAgent(AnonymousUser):
    """``request.user`` for a request made with a node credential.

    Deliberately not authenticated as a person: user-facing permissions (``IsAuthenticated``,
    ``HasScope``) reject it, so a node credential opens agent endpoints only.
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def __str__(self) -> str:
        return f"node:{self.node.pk}"


class NodeCredentialAuthentication(authentication.BaseAuthentication):
    """Bearer node credentials. Other bearer tokens (``sk_`` API keys) are left to their class."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[NodeAgent, Node] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme != self.keyword or not token.startswith("nc_"):
            return None
        credential_attempt_allow(request)
        node = node_authenticate(token)
        if node is None:
            credential_failure_record(request)
            raise exceptions.AuthenticationFailed("Invalid node credential, or the node was retired.")
        return NodeAgent(node), node

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class IsNodeAgent(permissions.BasePermission):
    message = "This endpoint needs a node credential (Authorization: Bearer nc_...)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Node)


def request_node(request: Request) -> Node:
    """The authenticated node of an agent request (views guarded by ``IsNodeAgent``)."""
    node = request.auth
    assert isinstance(node, Node)
    return node


class NodeCredentialScheme(OpenApiAuthenticationExtension):
    target_class = "providers.auth.NodeCredentialAuthentication"
    name = "NodeCredential"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "nc_<prefix>_<secret>",
            "description": "The node credential `suanli-agent join` received at registration.",
        }
