"""``/api/v1/profile``: the caller's buyer profile (the SSH public key jobs ordered with
``"ssh": true`` are launched with)."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.auth import HasScope
from core.schema import error_response
from core.services import buyer_ssh_key_get, buyer_ssh_key_set
from core.ssh_keys import SSH_KEY_MAX_LENGTH


class ProfileSerializer(serializers.Serializer):
    ssh_public_key = serializers.CharField(
        allow_blank=True,
        max_length=SSH_KEY_MAX_LENGTH + 64,  # the service gives the precise error
        trim_whitespace=True,
        help_text="One OpenSSH public key line (ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa); "
        '"" clears it.',
    )


class ProfileView(APIView):
    """Read or replace the caller's profile. Reading needs the ``read`` scope, changing ``trade``."""

    permission_classes = [permissions.IsAuthenticated, HasScope]

    @property
    def required_scope(self) -> str:
        return "read" if self.request.method in permissions.SAFE_METHODS else "trade"

    @extend_schema(responses=ProfileSerializer)
    def get(self, request: Request) -> Response:
        return Response({"ssh_public_key": buyer_ssh_key_get(user=request.user)})

    @extend_schema(
        request=ProfileSerializer,
        responses={200: ProfileSerializer, 400: error_response("Not an OpenSSH public key line.")},
    )
    def put(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ProfileSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        profile = buyer_ssh_key_set(
            user=cast(User, request.user), ssh_public_key=body.validated_data["ssh_public_key"]
        )
        return Response({"ssh_public_key": profile.ssh_public_key})

    patch = put
