"""The Twilio ingress adapter: voice webhook, Media Streams WebSocket, status and recording
callbacks, and call control through the Twilio REST API.

Invariant kept by the package as a whole: every request that claims to come from Twilio is
checked against its ``X-Twilio-Signature`` (and, for a media stream, its single-use stream
token) before it can change anything; a refused request only leaves a security audit entry.
"""
