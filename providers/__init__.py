"""voicehub providers package."""
