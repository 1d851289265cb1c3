"""Brokers: the ways a room reaches other nodes (the interface is chat/broker.py)."""
