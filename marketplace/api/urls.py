from django.urls import path

from marketplace.api.views import JobDetailView, JobLogsView

urlpatterns = [
    path("jobs/<int:job_id>", JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/logs", JobLogsView.as_view(), name="job-logs"),
]
