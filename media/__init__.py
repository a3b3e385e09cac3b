"""voicehub media package."""
