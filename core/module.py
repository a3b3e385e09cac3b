"""The Python module API: declare tables, reducers, lifecycle and scheduled reducers.

A ``Module`` collects declarations and turns them into a serializable ``ModuleDef`` plus
the Python callables behind each reducer; the store only ever consumes the ``ModuleDef``
(the same description a WASM module will produce) and the callables. Invariant: every
reducer parameter has a declared column type, so calls are validated before they run.

    mod = Module("chat")

    @mod.table(primary_key="id", indexes=[btree("by_time", "sent_at")])
    class Message:
        id: int = column(auto_inc=True)
        room: str
        text: str
        sent_at: Timestamp

    @mod.reducer
    def send(ctx, room: str, text: str) -> None:
        ctx.db.message.insert(room=room, text=text, sent_at=ctx.timestamp)
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.errors import ArgumentError, SchemaError
from core.schema import (
    ColumnDef,
    IndexDef,
    IndexKind,
    ModuleDef,
    ParamDef,
    PolicyDef,
    ReducerDef,
    ReducerKind,
    ScheduleDef,
    TableDef,
    check_name,
)
from core.types import ColumnType, check, from_annotation

ReducerFn = Callable[..., Any]
_MISSING: Any = object()


class column:
    """Extra facts about a column declared in a table class."""

    def __init__(
        self,
        default: Any = _MISSING,
        *,
        auto_inc: bool = False,
        unique: bool = False,
        index: IndexKind | None = None,
        type: str | ColumnType | None = None,
    ) -> None:
        self.default = default
        self.auto_inc = auto_inc
        self.unique = unique
        self.index = index
        self.type = ColumnType(type) if type is not None else None


def index(name: str, *columns: str, kind: IndexKind = "hash", unique: bool = False) -> IndexDef:
    return IndexDef(name=name, columns=tuple(columns), kind=kind, unique=unique)


def btree(name: str, *columns: str, unique: bool = False) -> IndexDef:
    return IndexDef(name=name, columns=tuple(columns), kind="btree", unique=unique)


def read_policy(name: str, predicate: str) -> PolicyDef:
    """Non-system callers see only rows for which ``predicate`` (SQL) holds."""
    return PolicyDef(name=name, kind="read", predicate=predicate)


def write_policy(name: str, predicate: str) -> PolicyDef:
    """Non-system callers may insert, update or delete only rows for which it holds."""
    return PolicyDef(name=name, kind="write", predicate=predicate)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def table_def_from_class(
    cls: type,
    *,
    name: str | None,
    primary_key: str | Sequence[str] | None,
    indexes: Iterable[IndexDef],
    unique: Iterable[str | Sequence[str]],
    public: bool,
    policies: Iterable[PolicyDef] = (),
) -> TableDef:
    hints = typing.get_type_hints(cls)
    columns: list[ColumnDef] = []
    extra: list[IndexDef] = list(indexes)
    for cname, ann in hints.items():
        if cname.startswith("_"):
            continue
        raw = cls.__dict__.get(cname, _MISSING)
        spec = raw if isinstance(raw, column) else column(raw)
        try:
            ctype, nullable = from_annotation(ann)
        except TypeError as e:
            raise SchemaError(f"{cls.__name__}.{cname}: {e}") from None
        if spec.type is not None:
            ctype = spec.type
        has_default = spec.default is not _MISSING
        columns.append(
            ColumnDef(
                name=cname,
                type=ctype,
                nullable=nullable,
                auto_inc=spec.auto_inc,
                has_default=has_default,
                default=spec.default if has_default else None,
            )
        )
        if spec.unique:
            extra.append(IndexDef(name=f"{cname}_unique", columns=(cname,), unique=True))
        elif spec.index is not None:
            extra.append(IndexDef(name=f"by_{cname}", columns=(cname,), kind=spec.index))
    for u in unique:
        cols = (u,) if isinstance(u, str) else tuple(u)
        extra.append(IndexDef(name="_".join(cols) + "_unique", columns=cols, unique=True))
    if primary_key is None:
        auto = [c.name for c in columns if c.auto_inc]
        if len(auto) != 1:
            raise SchemaError(f"table {cls.__name__}: declare primary_key=")
        primary_key = auto[0]
    pk = (primary_key,) if isinstance(primary_key, str) else tuple(primary_key)
    return TableDef(
        name=name or _snake(cls.__name__),
        columns=tuple(columns),
        primary_key=pk,
        indexes=tuple(extra),
        public=public,
        policies=tuple(policies),
    ).validate()


def reducer_def_from_function(
    fn: ReducerFn, name: str | None, kind: ReducerKind, params: Mapping[str, str] | None
) -> ReducerDef:
    rname = name or fn.__name__
    check_name("reducer", rname)
    sig = inspect.signature(fn)
    plist = list(sig.parameters.values())
    if not plist:
        raise SchemaError(f"reducer {rname!r}: the first parameter must be ctx")
    hints = typing.get_type_hints(fn)
    out: list[ParamDef] = []
    for p in plist[1:]:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise SchemaError(f"reducer {rname!r}: *args/**kwargs are not supported")
        ann: Any = (params or {}).get(p.name, hints.get(p.name, _MISSING))
        if ann is _MISSING:
            raise SchemaError(f"reducer {rname!r}: parameter {p.name!r} needs a type annotation")
        try:
            ctype, nullable = from_annotation(ann)
        except TypeError as e:
            raise SchemaError(f"reducer {rname!r}, parameter {p.name!r}: {e}") from None
        has_default = p.default is not p.empty
        out.append(
            ParamDef(
                name=p.name,
                type=ctype,
                nullable=nullable,
                has_default=has_default,
                default=p.default if has_default else None,
            )
        )
    if kind != "reducer" and out:
        raise SchemaError(f"lifecycle reducer {rname!r} takes only ctx")
    return ReducerDef(name=rname, params=tuple(out), kind=kind)


def bind_arguments(rdef: ReducerDef, args: Any) -> list[Any]:
    """Validate call arguments (a mapping by name or a sequence by position) -> list."""
    params = rdef.params
    if args is None:
        args = {}
    if isinstance(args, Mapping):
        out = [_one(rdef, p, args.get(p.name, _MISSING)) for p in params]
        known = sum(1 for p in params if p.name in args)
        if known != len(args):
            names = {p.name for p in params}
            unknown = sorted(str(k) for k in args if k not in names)
            raise ArgumentError(f"reducer {rdef.name!r}: unknown argument(s) {unknown}")
        return out
    if isinstance(args, list | tuple):
        if len(args) > len(params):
            raise ArgumentError(
                f"reducer {rdef.name!r} takes {len(params)} argument(s), got {len(args)}"
            )
        return [_one(rdef, p, args[i] if i < len(args) else _MISSING) for i, p in enumerate(params)]
    raise ArgumentError(f"reducer {rdef.name!r}: arguments must be an object or an array")


def _one(rdef: ReducerDef, p: ParamDef, v: Any) -> Any:
    if v is _MISSING:
        if p.has_default:
            return p.default
        raise ArgumentError(f"reducer {rdef.name!r}: missing argument {p.name!r}")
    try:
        return check(p.type, p.nullable, v, f"argument {p.name!r}")
    except SchemaError:
        raise
    except Exception as e:
        raise ArgumentError(f"reducer {rdef.name!r}: {e}") from None


class Module:
    """Collects the tables and reducers of one module."""

    def __init__(self, name: str) -> None:
        check_name("module", name)
        self.name = name
        self.tables: list[TableDef] = []
        self.reducers: dict[str, tuple[ReducerDef, ReducerFn]] = {}
        self.schedules: list[ScheduleDef] = []

    def add_table(self, tdef: TableDef) -> TableDef:
        tdef.validate()
        if any(t.name == tdef.name for t in self.tables):
            raise SchemaError(f"module {self.name!r}: table {tdef.name!r} declared twice")
        self.tables.append(tdef)
        return tdef

    def table(
        self,
        cls: type | None = None,
        *,
        name: str | None = None,
        primary_key: str | Sequence[str] | None = None,
        indexes: Iterable[IndexDef] = (),
        unique: Iterable[str | Sequence[str]] = (),
        public: bool = True,
        policies: Iterable[PolicyDef] = (),
    ) -> Any:
        def wrap(c: type) -> type:
            tdef = table_def_from_class(
                c,
                name=name,
                primary_key=primary_key,
                indexes=indexes,
                unique=unique,
                public=public,
                policies=policies,
            )
            self.add_table(tdef)
            c.__table__ = tdef  # type: ignore[attr-defined]
            return c

        return wrap(cls) if cls is not None else wrap

    def add_reducer(self, rdef: ReducerDef, fn: ReducerFn) -> None:
        if rdef.name in self.reducers:
            raise SchemaError(f"module {self.name!r}: reducer {rdef.name!r} declared twice")
        self.reducers[rdef.name] = (rdef, fn)

    def reducer(
        self,
        fn: ReducerFn | None = None,
        *,
        name: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        def wrap(f: ReducerFn) -> ReducerFn:
            self.add_reducer(reducer_def_from_function(f, name, "reducer", params), f)
            return f

        return wrap(fn) if fn is not None else wrap

    def _lifecycle(self, kind: ReducerKind, fn: ReducerFn) -> ReducerFn:
        rdef = reducer_def_from_function(fn, f"{self.name}_{kind}", kind, None)
        self.add_reducer(rdef, fn)
        return fn

    def init(self, fn: ReducerFn) -> ReducerFn:
        """Runs once, in the first transaction after the module is first installed."""
        return self._lifecycle("init", fn)

    def client_connected(self, fn: ReducerFn) -> ReducerFn:
        return self._lifecycle("client_connected", fn)

    def client_disconnected(self, fn: ReducerFn) -> ReducerFn:
        return self._lifecycle("client_disconnected", fn)

    def scheduled(
        self, *, every_s: float | None = None, every_us: int | None = None, name: str | None = None
    ) -> Callable[[ReducerFn], ReducerFn]:
        """A reducer run every interval from the module's first start (schedule is a row)."""
        if (every_s is None) == (every_us is None):
            raise SchemaError("scheduled(): give exactly one of every_s= or every_us=")
        interval = every_us if every_us is not None else round(float(every_s or 0) * 1e6)
        if interval <= 0:
            raise SchemaError("scheduled(): the interval must be positive")

        def wrap(f: ReducerFn) -> ReducerFn:
            rdef = reducer_def_from_function(f, name, "reducer", None)
            if rdef.params:
                raise SchemaError(f"scheduled reducer {rdef.name!r} takes only ctx")
            self.add_reducer(rdef, f)
            self.schedules.append(ScheduleDef(reducer=rdef.name, every_us=interval))
            return f

        return wrap

    def definition(self) -> ModuleDef:
        return ModuleDef(
            name=self.name,
            tables=tuple(self.tables),
            reducers=tuple(r for r, _ in self.reducers.values()),
            schedules=tuple(self.schedules),
        )
