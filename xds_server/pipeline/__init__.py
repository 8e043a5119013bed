"""From a stored intent to what every proxy ACKed: the publisher (translate,
check, publish; bursts coalesced) and the change path (changes.py: apply an
edit, wait for the ACKs) that the admin API and the experiments share."""
