"""The results store: every Redis key casign uses, and the embedded Redis of a CA folder."""
