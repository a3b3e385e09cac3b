"""The ``voicehub`` command line (filled in below)."""


def main() -> None:
    raise SystemExit(0)
