"""A small voicehub user module: run it with `voicehub serve --module examples/modules/chat.py`."""

from core import Module, ReducerContext, ReducerError, Timestamp, btree, column

chat = Module("chat")


@chat.table(primary_key="id", indexes=[btree("by_room_time", "room", "sent_at")])
class Message:
    id: int = column(auto_inc=True)
    room: str
    text: str
    sent_at: Timestamp


@chat.reducer
def send(ctx: ReducerContext, room: str, text: str) -> int:
    if not text.strip():
        raise ReducerError("empty message")
    return ctx.db.message.insert(room=room, text=text, sent_at=ctx.timestamp).id
