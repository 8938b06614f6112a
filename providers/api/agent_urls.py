"""Agent routes of the providers app, included under /api/agent/v1/ by ``config.agent_urls``."""

from django.urls import path

from providers.api.views import AgentHeartbeatView, AgentPingView, AgentRegisterView

urlpatterns = [
    path("ping", AgentPingView.as_view(), name="agent-ping"),
    path("register", AgentRegisterView.as_view(), name="agent-register"),
    path("heartbeat", AgentHeartbeatView.as_view(), name="agent-heartbeat"),
]
