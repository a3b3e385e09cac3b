"""voicehub modules package."""
