"""What lasts on disk: files written so that a crash never leaves a torn one."""
