"""``/api/v1/api-keys``: list, create (secret shown once) and revoke the caller's API keys.

Creating and revoking need a browser session (portal log-in, with CSRF): an API key can never
mint or revoke keys, so a leaked key cannot entrench itself. Listing works with any key.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import query_choice
from core.auth import HasScope
from core.idempotency import idempotency_parameter, idempotent
from core.models import ApiKey, ApiKeyScope
from core.schema import error_response
from core.services import apikey_create, apikey_revoke


class ApiKeySerializer(serializers.ModelSerializer):
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKeyScope.choices))
    key_prefix = serializers.SerializerMethodField()
    active = serializers.BooleanField(source="is_active")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "key_prefix", "scopes", "active", "created_at", "last_used_at", "revoked_at"]

    def get_key_prefix(self, api_key: ApiKey) -> str:
        return f"sk_{api_key.prefix}_"


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="The whole key. Shown this once; only its hash is kept.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKeyScope.choices), min_length=1, max_length=3
    )


class SessionOnly(permissions.BasePermission):
    message = "API keys are created and revoked with a portal session, not with an API key."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.successful_authenticator, SessionAuthentication)


class ApiKeyListCreateView(generics.ListAPIView):
    serializer_class = ApiKeySerializer
    required_scope = "read"

    def get_permissions(self) -> list[Any]:
        if self.request is not None and self.request.method == "POST":
            return [permissions.IsAuthenticated(), SessionOnly()]
        return [permissions.IsAuthenticated(), HasScope()]

    def get_queryset(self) -> QuerySet[ApiKey]:
        keys = ApiKey.objects.filter(user=self.request.user)  # type: ignore[misc]  # IsAuthenticated
        active = query_choice(self.request, "active", ["true", "false"])
        if active is not None:
            keys = keys.filter(revoked_at__isnull=active == "true")
        return keys

    @extend_schema(parameters=[OpenApiParameter("active", str, enum=["true", "false"])])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer, 200: ApiKeyCreatedSerializer},
        parameters=[idempotency_parameter()],
        description="Create a key (portal session only). The response holds the secret, once.",
    )
    @idempotent()
    def post(self, request: Request) -> Response:
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        issued = apikey_create(
            user=request.user,  # type: ignore[arg-type]
            name=body.validated_data["name"],
            scopes=body.validated_data["scopes"],
        )
        data = dict(ApiKeySerializer(issued.api_key).data)
        data["secret"] = issued.secret
        return Response(data, status=status.HTTP_201_CREATED)


class ApiKeyRevokeView(APIView):
    permission_classes = [permissions.IsAuthenticated, SessionOnly]

    @extend_schema(
        request=None,
        responses={200: ApiKeySerializer, 404: error_response("No such key of yours.")},
        description="Revoke a key (portal session only); revoking a revoked key changes nothing.",
    )
    def post(self, request: Request, api_key_id: int) -> Response:
        api_key = apikey_revoke(user=request.user, api_key_id=api_key_id)  # type: ignore[arg-type]
        return Response(ApiKeySerializer(api_key).data)
