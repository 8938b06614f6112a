from rest_framework import serializers

from providers.models import AcceleratorModel


class AcceleratorSerializer(serializers.ModelSerializer):
    class Meta:
        model = AcceleratorModel
        fields = [
            "id", "vendor", "family", "model", "kind", "memory_gib", "fp16_tflops", "int8_tops",
            "memory_bandwidth_gbps", "tdp_watts", "interconnect", "software_stack", "source",
        ]  # fmt: skip
