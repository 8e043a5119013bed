"""The intent (intent.py): services, backends, strategies and policies as frozen
values, plus their canonical JSON form (codec.py). The bottom of the package:
it imports nothing of ours but the errors."""
