"""The Lua scripts of the Redis store. Each runs atomically on the server.

Every script touches only the keys it is given, and those keys share one hash tag
(``{<prefix><feature>:<scope>}``), so on Redis Cluster they live in one slot. Times come from
the caller (``now`` in seconds since the epoch); money is integer nano-dollars, returned as
integers (Lua's ``tostring`` would round them to 14 digits).
"""

from __future__ import annotations

__all__ = [
    "LEDGER_RELEASE",
    "LEDGER_RESERVE",
    "LEDGER_SETTLE",
    "LEDGER_TOTALS",
    "LIMITER_ACQUIRE",
    "LIMITER_RELEASE",
]

# Shared prologue: drop holds whose lease ended before now (KEYS[2] holds, KEYS[3] leases),
# then sum what is still held. ARGV[1] is now.
_LIVE_HOLDS = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1])
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1]) end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local reserved = 0
for _, value in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(value) end
"""

#: KEYS: spent, holds, leases. ARGV: now, hold id, amount, limit (-1: none), lease end,
#: keep (ms, 0: forever). Returns {granted, spent, reserved}.
LEDGER_RESERVE = (
    _LIVE_HOLDS
    + """
local amount = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if limit >= 0 and spent + reserved + amount > limit then
  return {0, spent, reserved}
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
local keep = tonumber(ARGV[6])
if keep > 0 then
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, keep) end
end
return {1, spent, reserved + amount}
"""
)

#: KEYS: spent, holds, leases. ARGV: now. Returns {spent, reserved}.
LEDGER_TOTALS = _LIVE_HOLDS + "\nreturn {spent, reserved}\n"

#: KEYS: spent, holds, leases. ARGV: hold id, actual, keep (ms, 0: forever).
LEDGER_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('INCRBY', KEYS[1], ARGV[2])
local keep = tonumber(ARGV[3])
if keep > 0 then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
"""

#: KEYS: spent, holds, leases. ARGV: hold id.
LEDGER_RELEASE = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# Token bucket level at now (ARGV[1]) for tpm tokens per minute (local tpm), from KEYS[n].
_BUCKET = """
local function bucket(key, now, tpm)
  local state = redis.call('HMGET', key, 'level', 'at')
  if not state[1] then return tpm end
  local elapsed = math.max(now - tonumber(state[2]), 0)
  return math.min(tpm, tonumber(state[1]) + elapsed * tpm / 60)
end
local function store_bucket(key, now, tpm, level)
  redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
  -- a bucket left alone refills completely; past that point its state says nothing
  redis.call('PEXPIRE', key, math.ceil((tpm - level) * 60000 / tpm) + 1000)
end
"""

#: KEYS: window, slots, tokens. ARGV: now, ticket, window seconds, max requests,
#: max concurrent, lease end, tokens, tokens per minute. Returns {granted, retry_after, why}.
LIMITER_ACQUIRE = (
    _BUCKET
    + """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local max_requests = tonumber(ARGV[4])
local max_concurrent = tonumber(ARGV[5])
local tokens = tonumber(ARGV[7])
local tpm = tonumber(ARGV[8])
if max_requests > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= max_requests then
    local rank = count - max_requests
    local nth = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')
    return {0, tostring(tonumber(nth[2]) + window - now), 'window'}
  end
end
if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
  if redis.call('ZCARD', KEYS[2]) >= max_concurrent then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, tostring(tonumber(first[2]) - now), 'concurrency'}
  end
end
if tpm > 0 then
  local level = bucket(KEYS[3], now, tpm)
  local need = math.min(tokens, tpm)
  if level < need then
    return {0, tostring((need - level) * 60 / tpm), 'tokens'}
  end
  store_bucket(KEYS[3], now, tpm, level - need)
end
if max_requests > 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
end
if max_concurrent > 0 then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
  local keep = math.ceil((tonumber(ARGV[6]) - now) * 1000) + 1000
  if redis.call('PTTL', KEYS[2]) < keep then redis.call('PEXPIRE', KEYS[2], keep) end
end
return {1, '0', ''}
"""
)

#: KEYS: slots, tokens. ARGV: now, ticket, tokens per minute, token refund.
LIMITER_RELEASE = (
    _BUCKET
    + """
redis.call('ZREM', KEYS[1], ARGV[2])
local tpm = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
if tpm > 0 and refund ~= 0 then
  local now = tonumber(ARGV[1])
  store_bucket(KEYS[2], now, tpm, math.min(tpm, bucket(KEYS[2], now, tpm) + refund))
end
return 1
"""
)
