"""Marketplace write services. Import from here: ``from marketplace.services import job_assign``."""

from marketplace.services.jobs import (
    JobEventIn,
    JobSpec,
    job_assign,
    job_event_record,
    job_for_node,
    job_stop_request,
    job_transition,
    jobs_mark_lost,
)
from marketplace.services.logs import job_log_append
from marketplace.services.usage import agent_usage_record
from marketplace.services.work import node_nudge, work_poll

__all__ = [
    "JobEventIn",
    "JobSpec",
    "agent_usage_record",
    "job_assign",
    "job_event_record",
    "job_for_node",
    "job_log_append",
    "job_stop_request",
    "job_transition",
    "jobs_mark_lost",
    "node_nudge",
    "work_poll",
]
