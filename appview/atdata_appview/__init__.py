"""atdata-appview: the AppView of the atdata federation (index, XRPC queries, pages)."""

__version__ = "0.1.0"
