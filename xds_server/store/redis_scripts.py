"""The Lua scripts of the Redis intent store (store/redis.py): each one atomic in
Redis, so a check and the write it guards cannot be separated by another client.

The intent hash holds `revision`, `intent` (codec JSON), `epoch`, `base` and `run`
(store/lineage.py says what they mean); `run` is always set by a script, from the
INFO of the Redis process that runs it, never by a client.
"""

from __future__ import annotations

_RUN_ID = """
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
"""

# WRITE: compare-and-set of one accepted write.
# KEYS: intent, recovery. ARGV: expected revision, expected epoch, new revision,
# intent JSON, channel, deadline (Redis time, microseconds).
# Returns 1 written, 0 the revision or epoch moved (another write came first),
# -1 Redis lost data or may have (no intent, loaded by another Redis process, or a
# recovery under way): nothing is written until the replicas reconcile,
# -2 the deadline passed: the caller gave up on this write, so it must not land.
WRITE = (
    _RUN_ID
    + """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000000 + tonumber(now[2]) > tonumber(ARGV[6]) then return -2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local held = redis.call('HMGET', KEYS[1], 'revision', 'epoch', 'run')
if not held[1] or held[3] ~= run_id() then return -1 end
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[3], 'intent', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[3])
return 1
"""
)

# SEED: the very first intent (revision 1, base 0), only if Redis holds none and no
# recovery is under way. KEYS: intent, recovery. ARGV: intent JSON, epoch, channel.
SEED = (
    _RUN_ID
    + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'revision', '1', 'intent', ARGV[1], 'epoch', ARGV[2],
           'base', '0', 'run', run_id())
redis.call('PUBLISH', ARGV[3], '1')
return 1
"""
)

# CLAIM: enter a replica's copy into the recovery (opening it, with its window, if
# none is under way and the intent is still what the replica judged lost).
# KEYS: intent, recovery, window. ARGV: replica id, revision, intent JSON, observed
# revision ("" = none), observed epoch, window in ms.
# Returns the window's remaining ms (-2: over, finish now), or -3 when nothing needs
# recovering any more (read again).
CLAIM = (
    _RUN_ID
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  local held = redis.call('HMGET', KEYS[1], 'revision', 'epoch', 'run')
  local lost = (not held[1]) or held[3] ~= run_id()
               or (held[1] == ARGV[4] and (held[2] or '') == ARGV[5])
  if not lost then return -3 end
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[6])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '\\n' .. ARGV[3])
return redis.call('PTTL', KEYS[3])
"""
)

# FINISH: once the window is over, the newest copy (highest revision among the
# claims and what Redis still holds; a tie goes to a claim, then to the lowest
# replica id) becomes the intent of a new epoch, at its own revision.
# KEYS: intent, recovery, window. ARGV: new epoch, channel.
# Returns the revision restored, -1 while the window is open, -3 if no recovery.
FINISH = (
    _RUN_ID
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -3 end
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local claims = redis.call('HGETALL', KEYS[2])
local best, best_rev, best_id = nil, -1, nil
for i = 1, #claims, 2 do
  local at = string.find(claims[i + 1], '\\n', 1, true)
  local rev = tonumber(string.sub(claims[i + 1], 1, at - 1))
  if rev > best_rev or (rev == best_rev and claims[i] < best_id) then
    best_rev, best, best_id = rev, string.sub(claims[i + 1], at + 1), claims[i]
  end
end
local held = redis.call('HMGET', KEYS[1], 'revision', 'intent')
if held[1] and held[2] and tonumber(held[1]) and tonumber(held[1]) > best_rev then
  best_rev, best = tonumber(held[1]), held[2]
end
local revision = math.max(best_rev, 1)
redis.call('HSET', KEYS[1], 'revision', tostring(revision), 'intent', best,
           'epoch', ARGV[1], 'base', tostring(best_rev), 'run', run_id())
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], tostring(revision))
return revision
"""
)
