"""suanli-agent: the provider-node daemon of Suanli Exchange.

It imports nothing from Django or the server packages: it speaks HTTP only (DESIGN.md section 3).
"""

__version__ = "0.1.0"
