"""Where the intent lives: the `IntentStore` Protocol (base.py) and its two
variants, in this process (memory.py) or in Redis for replicas (redis.py)."""
