"""Template filters for where a buyer reaches a job: ``{{ job|job_endpoints }}``, ``{{ job|job_ssh }}``.

The same figures as the API's ``endpoints`` and ``ssh`` (``marketplace.api.serializers``), so the
portal and the API never disagree. The job's node must be loaded (the portal's job queries
select it).
"""

from __future__ import annotations

from typing import Any

from django import template

from marketplace.api.serializers import job_endpoints as _job_endpoints
from marketplace.api.serializers import job_ssh as _job_ssh
from marketplace.models import Job

register = template.Library()


@register.filter
def job_endpoints(job: Job) -> list[dict[str, Any]]:
    return _job_endpoints(job)


@register.filter
def job_ssh(job: Job) -> dict[str, Any] | None:
    return _job_ssh(job)
