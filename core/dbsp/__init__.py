"""Incremental view maintenance after DBSP (Budiu et al., VLDB 2023).

A subscription's plan becomes a circuit of operators, one per module here, each consuming
the *change* (a Z-set: row -> integer weight) of its inputs for one commit and producing
the change of its output, with its integrated state mutated in place:

- ``source``: table changes -> filtered Z-set (linear)
- ``filter``, ``project``: stateless, linear: f(ΔA)
- ``join``: inner/left equi-join with key-indexed state of both sides:
  Δ(A⋈B) = ΔA⋈B + A⋈ΔB + ΔA⋈ΔB (A, B before the commit), plus NULL-padding for LEFT
- ``semijoin``: ``x IN (subquery)``: membership counts per key
- ``distinct``: integrated weights; emits only 0 <-> positive transitions
- ``aggregate`` with ``agg_linear`` (COUNT/SUM/AVG, O(1) per change), ``agg_minmax``
  (ordered multiset per group: exact under deletion) and ``agg_distinct`` (COUNT DISTINCT)
- ``topk``: ORDER BY ... LIMIT/OFFSET over an ordered multiset; emits the window's change
- ``union``: UNION ALL is Z-set addition; UNION is addition followed by ``distinct``
- ``arrangement``: key-indexed integrated state, shared across circuits via a registry
"""
