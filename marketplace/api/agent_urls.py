"""Job-facing agent routes, included under /api/agent/v1/ by ``config.agent_urls``."""

from django.urls import path

from marketplace.api.views import AgentJobEventView, AgentJobLogView, AgentUsageView, AgentWorkView

urlpatterns = [
    path("work", AgentWorkView.as_view(), name="agent-work"),
    path("jobs/<int:job_id>/events", AgentJobEventView.as_view(), name="agent-job-events"),
    path("jobs/<int:job_id>/logs", AgentJobLogView.as_view(), name="agent-job-logs"),
    path("usage", AgentUsageView.as_view(), name="agent-usage"),
]
