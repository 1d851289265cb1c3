"""The network side: the event loops that own every client connection, one connection's
state, the accept thread and its admission hook. Imports `chat` and `wire`."""
