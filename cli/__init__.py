"""The buyer and provider `suanli` CLI over the REST API (imports nothing from the server)."""

__version__ = "0.1.0"
