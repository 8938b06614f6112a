"""Words for the codes the marketplace stores: statuses, stop and preemption reasons, why an
order ended, and the fixed messages of the node agent.

Rows keep stable machine codes (``Order.status_reason`` holds an ``OrderReason``); the words are
chosen when a page or a response is rendered, so they follow the reader's language. Every text
here is a ``gettext_lazy`` message: ``str()`` it under the language wanted (the portal: the
user's; ``order_reason_english``: the API's stable English).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.utils import translation
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from marketplace.matching.market import PreemptReason
from marketplace.models import JobStatus, OrderReason, OrderStatus, Runtime, StopReason
from providers.models import NodeStatus

ORDER_STATUS_LABELS: dict[str, Promise] = {
    OrderStatus.OPEN: _("Waiting for capacity"),
    OrderStatus.ALLOCATED: _("Allocated"),
    OrderStatus.RUNNING: _("Running"),
    OrderStatus.ENDED: _("Ended"),
    OrderStatus.CANCELLED: _("Cancelled"),
    OrderStatus.FAILED: _("Failed"),
}
JOB_STATUS_LABELS: dict[str, Promise] = {
    JobStatus.QUEUED: _("Queued"),
    JobStatus.ASSIGNED: _("Assigned"),
    JobStatus.STARTING: _("Starting"),
    JobStatus.RUNNING: _("Running"),
    JobStatus.EXITED: _("Exited"),
    JobStatus.FAILED: _("Failed"),
    JobStatus.STOPPED: _("Stopped"),
    JobStatus.PREEMPTED: _("Preempted"),
    JobStatus.LOST: _("Lost"),
}
NODE_STATUS_LABELS: dict[str, Promise] = {
    NodeStatus.PENDING: _("Pending"),
    NodeStatus.ONLINE: _("Online"),
    NodeStatus.SUSPECT: _("Suspect"),
    NodeStatus.OFFLINE: _("Offline"),
    NodeStatus.DRAINING: _("Draining"),
    NodeStatus.RETIRED: _("Retired"),
}
STOP_REASON_LABELS: dict[str, Promise] = {
    StopReason.BUYER: _("stopped by you"),
    StopReason.PREEMPTION: _("preempted"),
    StopReason.FUNDS: _("your wallet cannot cover the next interval"),
    StopReason.OPERATOR: _("stopped by an operator"),
    StopReason.NODE_LOST: _("the node went offline"),
    StopReason.RENTAL_END: _("the rental period ended"),
}
RUNTIME_LABELS: dict[str, Promise] = {
    Runtime.DOCKER: _("Docker container"),
    Runtime.PROCESS: _("Host process"),
}
# ``Job.preemption_reason``; "" is an older row or a notice without a reason.
PREEMPTION_LABELS: dict[str, Promise] = {
    PreemptReason.HIGHER_TIER: _("an on-demand or reserved order needed the devices"),
    PreemptReason.OUTBID: _("a higher spot bid took the devices"),
    PreemptReason.PRICE_ABOVE_BID: _("the spot price rose above the bid"),
    "": _("capacity needed"),
}


def preemption_label(reason: str) -> str:
    """Why a spot job is (being) preempted, in the active language."""
    return str(PREEMPTION_LABELS.get(reason, PREEMPTION_LABELS[""]))


# --- Why an order is in its status ----------------------------------------------------------------

# The English of each text is the API's ``status_reason`` (the words orders carried before codes).
ORDER_REASON_TEXT: dict[str, Promise] = {
    OrderReason.CANCELLED_BY_BUYER: _("cancelled by buyer"),
    OrderReason.STOPPING_FOR_BUYER: _("stopping at the buyer's request"),
    OrderReason.RESERVED_WINDOW_PASSED: _("no capacity was found before the reserved window passed"),
    OrderReason.REQUEUED_NO_ACK: _("re-queued: node did not respond"),
    OrderReason.REQUEUED_NODE_LOST: _("node lost; waiting for capacity again"),
    OrderReason.RESTART_UNFUNDED: _("wallet cannot cover a restart"),
    OrderReason.RETRY_UNFUNDED: _("wallet cannot cover a retry"),
    OrderReason.JOB_EXITED: _("job exited with code %(exit_code)s"),
    OrderReason.JOB_FAILED: _("job failed"),
    OrderReason.JOB_STOPPED: _("stopped"),
    OrderReason.JOB_PREEMPTED: _("preempted (%(reason)s)"),
    OrderReason.NODE_LOST: _("the node went offline"),
}
JOB_FAILED_WITH_MESSAGE = _("job failed: %(message)s")


def order_reason_text(*, code: str, params: Mapping[str, Any] | None = None) -> str:
    """Why an order is in its status, in the active language ("" for no reason).

    A value that is not an ``OrderReason`` code (a row written by hand) is shown as it is.
    """
    if not code:
        return ""
    params = params or {}
    if code == OrderReason.JOB_FAILED and params.get("message"):
        return str(JOB_FAILED_WITH_MESSAGE) % {"message": job_message_text(str(params["message"]))}
    text = ORDER_REASON_TEXT.get(code)
    if text is None:
        return code
    if code == OrderReason.JOB_EXITED:
        return str(text) % {"exit_code": params.get("exit_code", "?")}
    if code == OrderReason.JOB_PREEMPTED:
        return str(text) % {"reason": preemption_label(str(params.get("preemption") or ""))}
    return str(text)


def order_reason_english(*, code: str, params: Mapping[str, Any] | None = None) -> str:
    """``order_reason_text`` in English whatever the request's language (the API's stable text)."""
    with translation.override("en"):
        return order_reason_text(code=code, params=params)


# --- What the node agent says about a job ------------------------------------------------------

# ``Job.message`` is free text from the agent (providers/agent: the daemon and its runtimes) or
# from the server when the agent never answered. These are its fixed sentences, word for word in
# English; the rest of a message after a known beginning (a Docker error, say) is the tool's own
# words and stays as it is.
JOB_MESSAGES: dict[str, Promise] = {
    "stopped before it started": _("stopped before it started"),
    "job ended while the agent was not watching": _("job ended while the agent was not watching"),
    "the node did not acknowledge the job in time": _("the node did not acknowledge the job in time"),
    "docker job has no image": _("docker job has no image"),
    "the docker runtime needs the `docker` package": _("the docker runtime needs the `docker` package"),
    "command must be a non-empty list of strings": _("command must be a non-empty list of strings"),
}
JOB_MESSAGE_PREFIXES: dict[str, Promise] = {
    "agent error: ": _("agent error: %(detail)s"),
    "cannot reach the Docker daemon: ": _("cannot reach the Docker daemon: %(detail)s"),
    "docker run failed: ": _("docker run failed: %(detail)s"),
    "cannot start job: ": _("cannot start job: %(detail)s"),
}
_RUNTIME_DISABLED = re.compile(r"runtime '(?P<runtime>[^']*)' is not enabled on this node")
RUNTIME_DISABLED = _("runtime '%(runtime)s' is not enabled on this node")


def job_message_text(message: str) -> str:
    """The agent's message about a job in the active language, as far as its words are known.

    A stopped job's message is the stop reason (or job status) the server sent the agent.
    """
    message = message.strip()
    if message in JOB_MESSAGES:
        return str(JOB_MESSAGES[message])
    if message in STOP_REASON_LABELS:
        return str(STOP_REASON_LABELS[message])
    if message in JOB_STATUS_LABELS:
        return str(JOB_STATUS_LABELS[message])
    for prefix, text in JOB_MESSAGE_PREFIXES.items():
        if message.startswith(prefix):
            return str(text) % {"detail": message.removeprefix(prefix)}
    disabled = _RUNTIME_DISABLED.fullmatch(message)
    if disabled:
        return str(RUNTIME_DISABLED) % {"runtime": disabled["runtime"]}
    return message
