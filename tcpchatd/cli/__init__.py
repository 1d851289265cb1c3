"""The commands people type: `tcpchatctl` and `tcpchat-client`. They import `wire`, the admin
codec, the command specs and the settings module, never `net` or `chat`."""
