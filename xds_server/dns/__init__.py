"""Backends addressed by DNS name: the controller resolves them itself (base.py:
the Resolver Protocol and what is known of each name; cares.py: c-ares through
aiodns; memory.py: the in-memory twin for unit tests; refresher.py: follows the
intent and re-resolves every interval). health/ probes each address, the
publisher hands the addresses to the pure translator."""
