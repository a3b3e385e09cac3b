"""voicehub voicehub package."""
