"""The chat itself: the room (members, receipts, history, kick) and the bans. One lock, no
socket I/O; imports only `wire`."""
