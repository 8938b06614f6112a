"""The pure matching engine and spot clearing: dataclasses in, decisions out; no Django, no database.

The Celery layer loads open orders, nodes, offers, free devices and running spot jobs, then calls
``match_round`` (one whole round), ``clear_pool`` (one spot pool), ``preemptions_for`` (spot jobs to
evict for a higher tier) or ``explain`` (why an order is not matched), and commits the decisions.
"""

from marketplace.matching.engine import explain, firm_priority, firm_rank, match_round
from marketplace.matching.market import (
    ClearingResult,
    Device,
    Market,
    Node,
    Offer,
    Order,
    Placement,
    PoolKey,
    Preemption,
    PreemptReason,
    Reason,
    ReasonCode,
    Requirements,
    RoundPolicy,
    RoundResult,
    RunningSpot,
    Slot,
    Term,
)
from marketplace.matching.requirements import SoftwareSpecError, parse_software_spec, version_key
from marketplace.matching.spot import age_boost_bps, clear_pool, clearing_price, preemptions_for

__all__ = [
    "ClearingResult",
    "Device",
    "Market",
    "Node",
    "Offer",
    "Order",
    "Placement",
    "PoolKey",
    "PreemptReason",
    "Preemption",
    "Reason",
    "ReasonCode",
    "Requirements",
    "RoundPolicy",
    "RoundResult",
    "RunningSpot",
    "Slot",
    "SoftwareSpecError",
    "Term",
    "age_boost_bps",
    "clear_pool",
    "clearing_price",
    "explain",
    "firm_priority",
    "firm_rank",
    "match_round",
    "parse_software_spec",
    "preemptions_for",
    "version_key",
]
