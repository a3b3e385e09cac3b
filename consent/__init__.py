"""voicehub consent package."""
