"""What every part of casign agrees on, importing nothing else of casign: messages, refusal
codes, the index format, the queue's names, secret sources, the audit line, file writing."""
