"""Buyer API for persistent volumes: create (idempotent), list, show, delete."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import CurrencyField, MoneyField
from core.auth import HasScope
from core.idempotency import idempotency_parameter, idempotent
from core.schema import error_response
from marketplace.models import Volume
from marketplace.services.job_spec import VOLUME_MOUNT_ROOT
from marketplace.services.volumes import (
    MAX_VOLUME_GIB,
    VolumeRequest,
    volume_create,
    volume_delete,
    volume_get_for_buyer,
    volume_unpaid_delete_at,
    volumes_for_buyer,
)


class VolumeInSerializer(serializers.Serializer):
    node = serializers.IntegerField(min_value=1, max_value=2**63 - 1, help_text="The node to create it on.")
    name = serializers.CharField(
        max_length=63, help_text="Lower-case letters, digits, - and _; jobs mount it at /volumes/<name>."
    )
    size_gib = serializers.IntegerField(min_value=1, max_value=MAX_VOLUME_GIB)


class VolumeSerializer(serializers.ModelSerializer):
    node = serializers.IntegerField(source="node_id")
    price = MoneyField(source="price_micros", help_text="Per GiB-hour, fixed when the volume was created.")
    currency = CurrencyField()
    mount = serializers.SerializerMethodField(help_text="Where jobs see it.")
    charged = serializers.SerializerMethodField(help_text="What its lease has been charged so far.")

    class Meta:
        model = Volume
        fields = ["id", "name", "node", "size_gib", "price", "currency", "status", "mount", "charged",
                  "created_at", "deleted_at", "unpaid_since", "delete_at"]  # fmt: skip

    delete_at = serializers.SerializerMethodField(
        help_text="When an unpaid volume will be deleted (null while the wallet covers it)."
    )

    def get_delete_at(self, volume: Volume) -> str | None:
        moment = volume_unpaid_delete_at(volume)
        return serializers.DateTimeField().to_representation(moment) if moment else None

    def get_mount(self, volume: Volume) -> str:
        return f"{VOLUME_MOUNT_ROOT}/{volume.name}"

    def get_charged(self, volume: Volume) -> str:
        from core.money import format_amount

        # Annotated by the volumes selectors (one query for a whole page, not one per volume).
        return format_amount(getattr(volume, "charged_micros", 0))


class VolumeListCreateView(generics.ListAPIView):
    """The buyer's volumes (live ones; ``?all=true`` adds deleted ones) and creating one."""

    permission_classes = [IsAuthenticated, HasScope]
    serializer_class = VolumeSerializer

    @property
    def required_scope(self) -> str:
        return "trade" if self.request.method == "POST" else "read"

    def get_queryset(self) -> QuerySet[Volume]:
        everything = self.request.query_params.get("all", "").lower() in ("1", "true", "yes")
        return volumes_for_buyer(buyer=self.request.user, include_deleted=everything)  # type: ignore[arg-type]

    @extend_schema(parameters=[OpenApiParameter("all", bool, description="Include deleted volumes")])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=VolumeInSerializer,
        responses={
            201: VolumeSerializer,
            200: VolumeSerializer,
            402: error_response("The wallet cannot cover an hour of the volume."),
            409: error_response("The Idempotency-Key was used for another request, or is in progress."),
        },
        parameters=[idempotency_parameter(required=True)],
        description=(
            "Create a volume on a node that offers them; billed per GiB-hour at the node's volume price "
            'until deleted. Jobs on that node mount it with job.volumes: [{"name": ...}].'
        ),
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        data = VolumeInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        volume, created = volume_create(
            buyer=request.user,  # type: ignore[arg-type]
            request=VolumeRequest(node_id=v["node"], name=v["name"], size_gib=v["size_gib"]),
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        return Response(
            VolumeSerializer(volume).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class VolumeDetailView(APIView):
    """One of the buyer's volumes; DELETE removes it (refused while a live order mounts it)."""

    permission_classes = [IsAuthenticated, HasScope]

    @property
    def required_scope(self) -> str:
        return "trade" if self.request.method == "DELETE" else "read"

    @extend_schema(responses=VolumeSerializer)
    def get(self, request: Request, volume_id: int) -> Response:
        volume = volume_get_for_buyer(buyer=request.user, volume_id=volume_id)  # type: ignore[arg-type]
        return Response(VolumeSerializer(volume).data)

    @extend_schema(
        responses={200: VolumeSerializer, 409: error_response("A live order mounts the volume.")},
        description="Delete the volume: billing stops now and the node removes its data. Deleting again "
        "changes nothing.",
    )
    def delete(self, request: Request, volume_id: int) -> Response:
        volume = volume_get_for_buyer(buyer=request.user, volume_id=volume_id)  # type: ignore[arg-type]
        volume = volume_delete(volume=volume)
        return Response(VolumeSerializer(volume).data)
