"""tcpchatd: a threaded chat-room daemon speaking the Minigamy/TCPchat wire protocol."""

__version__ = "0.1.0"
