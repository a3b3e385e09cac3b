"""The Vonage Voice API ingress adapter (``VonageAdapter``): signed webhooks, NCCOs, the
WebSocket audio protocol and call control; see docs/providers-vonage.md.

Invariant: nothing here touches storage directly - every change goes through reducers on
the adapter's ``ProviderContext.client``.
"""

from providers.vonage.adapter import VonageAdapter

__all__ = ["VonageAdapter"]
