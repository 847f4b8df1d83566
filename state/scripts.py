"""Lua scripts: each runs atomically on one user's keys (one Cluster slot).

APPLY_EVENTS is the heart of exactly-once effects. Kafka delivers at least once:
after a crash or rebalance a worker may see events it has already applied. Each
user's meta hash stores, per source partition, the highest offset applied to that
user (its *fence*), written in the same atomic script as the events themselves.
An event at or below the fence is a replay and is skipped. Because a user's events
all come from one partition of each topic (the key is the user id), the per-user
fence orders them exactly as the partition does.

Events are inserted in a sorted set scored by event time, so events arriving out
of order within the lateness bound land in time order; older ones are refused as
'late'. The oldest event is dropped as soon as the set holds more than the bound,
not after the batch: the set never grows past the bound + 1, so with a bound
under Redis's zset-max-listpack-entries (128) it keeps its compact listpack
encoding (a set that once passed 128 entries stays a skiplist for good, about
twice the memory; the soak at --max-history 100 showed the drift). The sorted-set member is the event id, so the same event sent twice by a
producer (a new offset, the same id) is recognised as a 'duplicate' while its id
is still in the bounded history.

The script also scores the recommendations live: for each applied click it
returns the rank of the clicked item in the list last published for the user
(``rec_items`` in the profile, "\n"-delimited), 0 when absent, -1 when there was
no list. That is online HR@K and NDCG@K, computed where the click and the list
meet, atomically, with nothing extra to store.

KEYS: clicks set, clicks data, texts set, texts data, meta, profile (one user).
ARGV: [1] stream of this call ('c' clicks or 't' texts), [2] its fence field,
[3] max entries kept for that stream, [4] lateness ms, [5] a profile field to
return, then one group of five per event: offset, ts, event id, item id ('' for
texts), payload.
Returns {outcomes, ranks, clicks, texts, clicks applied ever, profile field}:
clicks and texts are flat [id, ts, payload, ...] histories, oldest first,
present only when something was applied (they feed the refresh). The profile
field is the previous long-term vector, which the refresh measures drift from:
returned here, it costs no extra round trip.
"""

from __future__ import annotations

__all__ = ["APPLY_EVENTS", "ADVANCE_OFFSET", "WRITE_PROFILE", "OUTCOMES"]

OUTCOMES = ("applied", "duplicate", "replay", "late")

APPLY_EVENTS = r"""
local s, fence_field = ARGV[1], ARGV[2]
local set, data = KEYS[1], KEYS[2]
if s == 't' then set, data = KEYS[3], KEYS[4] end
local limit, lateness = tonumber(ARGV[3]), tonumber(ARGV[4])
local fence = tonumber(redis.call('HGET', KEYS[5], fence_field) or '-1')
local last = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
local newest = last[2] and tonumber(last[2]) or nil
local recs = s == 'c' and redis.call('HGET', KEYS[6], 'rec_items')
local outcomes, ranks, applied = {}, {}, 0
for i = 6, #ARGV, 5 do
  local offset, ts, id, item, payload = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local outcome, rank = nil, -1
  if offset <= fence then
    outcome = 'replay'
  elseif redis.call('ZSCORE', set, id) then
    outcome = 'duplicate'
  elseif newest and ts < newest - lateness then
    outcome = 'late'
  else
    redis.call('ZADD', set, ts, id)
    redis.call('HSET', data, id, payload)
    if redis.call('ZCARD', set) > limit then
      local oldest = redis.call('ZRANGE', set, 0, 0)[1]
      redis.call('ZREMRANGEBYRANK', set, 0, 0)
      redis.call('HDEL', data, oldest)
    end
    applied = applied + 1
    if not newest or ts > newest then newest = ts end
    outcome = 'applied'
    if recs then
      local at = string.find(recs, '\n' .. item .. '\n', 1, true)
      rank = 0
      if at then rank = select(2, string.gsub(string.sub(recs, 1, at), '\n', '')) end
    end
  end
  if offset > fence then fence = offset end
  outcomes[#outcomes + 1] = outcome
  ranks[#ranks + 1] = rank
end
redis.call('HSET', KEYS[5], fence_field, fence)
if applied == 0 then return {outcomes, ranks, {}, {}, 0, false} end
redis.call('HINCRBY', KEYS[5], 'applied:' .. s, applied)
local function history(hset, hdata)
  local ids, out = redis.call('ZRANGE', hset, 0, -1, 'WITHSCORES'), {}
  for j = 1, #ids, 2 do
    out[#out + 1] = ids[j]
    out[#out + 1] = ids[j + 1]
    out[#out + 1] = redis.call('HGET', hdata, ids[j])
  end
  return out
end
local clicks_applied = tonumber(redis.call('HGET', KEYS[5], 'applied:c') or '0')
return {outcomes, ranks, history(KEYS[1], KEYS[2]), history(KEYS[3], KEYS[4]), clicks_applied,
        redis.call('HGET', KEYS[6], ARGV[5])}
"""

# KEYS[1] offsets hash; ARGV[1] partition, ARGV[2] offset. Never moves backwards.
ADVANCE_OFFSET = r"""
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return current
"""

# A refresh's results for one user, atomically with its new version.
# KEYS: meta, profile. ARGV: [1] number of field/value pairs m, then the m pairs,
# then [2m+2] number of changed interests c, the c names, then every interest name.
# Each changed interest's ``version:<name>`` becomes the new user version, so a
# consumer can tell which interests moved at which version.
# Returns {new version, version:<name> of every interest (false where never set)}.
WRITE_PROFILE = r"""
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local m = tonumber(ARGV[1])
local pairs_at, changed_at = 2, 2 * m + 2
local fields = {}
for i = pairs_at, changed_at - 1 do fields[#fields + 1] = ARGV[i] end
for i = changed_at + 1, changed_at + tonumber(ARGV[changed_at]) do
  fields[#fields + 1] = 'version:' .. ARGV[i]
  fields[#fields + 1] = version
end
if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
local names = {}
for i = changed_at + tonumber(ARGV[changed_at]) + 1, #ARGV do names[#names + 1] = 'version:' .. ARGV[i] end
local out = {version}
if #names > 0 then
  for _, v in ipairs(redis.call('HMGET', KEYS[2], unpack(names))) do out[#out + 1] = v end
end
return out
"""
