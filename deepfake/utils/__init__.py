"""Plain helpers every layer may use: atomic file writes, devices and torchrun, hashes and file stamps, memos, text."""
