"""What crosses the wire: frames, confirms in bulk, nickname rules, error codes. Pure, no I/O."""
