from rest_framework import generics
from rest_framework.permissions import AllowAny

from providers.api.serializers import AcceleratorSerializer
from providers.models import AcceleratorModel


class AcceleratorListView(generics.ListAPIView):
    """The hardware catalog: public, small, unpaginated."""

    permission_classes = [AllowAny]
    serializer_class = AcceleratorSerializer
    pagination_class = None
    queryset = AcceleratorModel.objects.order_by("vendor", "model")
