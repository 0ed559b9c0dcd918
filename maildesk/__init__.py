"""maildesk: an e-mail-driven service desk.

The message flow, one module per stage:
transport (ingest pipe | lmtp | imap) -> inbox -> parse -> route -> commands
-> workflow decision -> store -> notify -> outbox -> smtp.
"""

__version__ = "0.1.0"
