"""SQL for voicehub: read-only SELECT parsed by sqlglot, lowered to a small logical plan
that both the ad-hoc executor and the DBSP subscription compiler consume."""
