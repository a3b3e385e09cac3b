"""The ``voice`` system module: calls, consent, recordings, transcripts, agent speech, audit.

``build_voice_module()`` returns the module (see docs/voice-model.md). Invariant of the
package: it imports only ``core`` (and the standard library and ``cryptography``), never
``voicehub``: it is a module like any other, declared with the public module API.
"""

from consent.module import build_voice_module

__all__ = ["build_voice_module"]
