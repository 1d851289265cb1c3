"""The admin channel: its codec and Unix-socket server, the one table of commands (specs.py,
which imports nothing) and their handlers."""
