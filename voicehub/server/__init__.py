"""voicehub's server: REST and WebSocket over one port, on top of the embedded store.

``Hub`` holds the shared state, ``create_app`` builds the ASGI app, ``make_server`` runs
it under uvicorn; ``ServerSystem`` is the server's own module (request ids, sessions)
and must be installed with the user modules (``ServerSystem.modules``).
"""

from voicehub.server.asgi import create_app
from voicehub.server.hub import Hub
from voicehub.server.serve import Server, bind, make_server
from voicehub.server.settings import ServerConfig
from voicehub.server.system import ServerSystem

__all__ = ["Hub", "Server", "ServerConfig", "ServerSystem", "bind", "create_app", "make_server"]
