"""Lua scripts: each runs atomically on one user's keys, or the catalogue's (one Cluster slot).

APPLY_EVENTS is the heart of exactly-once effects. Kafka delivers at least once:
after a crash or rebalance a worker may see events it has already applied. Each
user's meta hash stores, per source partition, the highest offset applied to that
user (its *fence*), written in the same atomic script as the events themselves.
An event at or below the fence is a replay and is skipped (unless it was late:
see below). Because a user's events all come from one partition of each topic
(the key is the user id), the per-user fence orders them exactly as the
partition does.

The values are the packed strings of `state.layout` (layout 3: one 32-byte
record per click, a running mean of text embeddings, one profile string); the
script checks each value's layout byte and refuses another with an error that
starts with ``LAYOUT``. Layout 2 values are read too: its click records lack
only the 8-byte context word, which the script appends (zero: no context) to
every record of a layout 2 history before it changes it. Clicks are kept in
time order: events arriving in order (the usual case) are appended; one that
arrives out of order within the lateness bound is merged into its place;
older ones are refused as 'late', and their hashes kept (the last 32 of each
stream, meta fields ``late:c`` and ``late:t``) so that a replay of one is
'late' again and its dead letter is published however the first attempt
ended.
After the batch the oldest records beyond the bound are dropped. The same
event id sent again (a new offset, the same id) is a 'duplicate' while its
hash is among the kept records (clicks) or the last --max-texts text ids.

A text is not kept: its embedding (int16) is folded into the user's running
mean, ``m += (x - m) / n``, which is the text interest the fusion was trained
on (the mean of every text the user wrote).

The script also scores the recommendations live: for each applied click it
returns the rank of the clicked item in the list last written for the user (the
item hashes in the profile), 0 when absent, -1 when there was no list. That is
online HR@K and NDCG@K, computed where the click and the list meet.

KEYS: clicks, texts, meta, profile (one user).
ARGV: [1] click fence field, [2] text fence field, [3] clicks kept, [4] text ids
kept, [5] lateness ms, [6] number of clicks n, then n pairs (offset, 32-byte
record), then one group of four per text: offset, ts, 6-byte event hash,
int16 embedding ('' for none).
Returns {click outcomes, ranks, text outcomes, clicks value, texts value,
clicks applied ever, previous long-term vector}: outcomes are one letter per
event (a applied, d duplicate, r replay, l late); the values and the vector
(float32 bytes, what the refresh measures drift from) come back only when
something was applied, the history the refresh reads.
"""

from __future__ import annotations

__all__ = ["APPLY_EVENTS", "ADVANCE_OFFSET", "WRITE_PROFILE", "CLEAR_PENDING", "APPLY_ITEMS", "OUTCOMES"]

OUTCOMES = {"a": "applied", "d": "duplicate", "r": "replay", "l": "late"}

APPLY_EVENTS = r"""
local LAYOUT, REC, OLD_LAYOUT, OLD_REC = 3, 32, 2, 24
local lateness = tonumber(ARGV[5])
local meta = KEYS[3]

local function layout_error(what, value)
  return redis.error_reply('LAYOUT ' .. what .. ' value of ' .. KEYS[1] .. ' has layout ' .. value ..
                           '; this release reads layouts ' .. OLD_LAYOUT .. ' and ' .. LAYOUT)
end
-- An event hash in a packed string, at positions first, first + step, ... only.
local function holds(s, needle, first, step)
  local at = string.find(s, needle, 1, true)
  while at do
    if at >= first and (at - first) % step == 0 then return true end
    at = string.find(s, needle, at + 1, true)
  end
  return false
end

local h = redis.call('GET', KEYS[1])
if h and string.byte(h, 1) == OLD_LAYOUT then  -- the same records without their context word: add it
  local parts, none = {string.char(LAYOUT)}, string.rep(string.char(0), REC - OLD_REC)
  for at = 2, #h, OLD_REC do parts[#parts + 1] = string.sub(h, at, at + OLD_REC - 1) .. none end
  h = table.concat(parts)
end
if h and string.byte(h, 1) ~= LAYOUT then return layout_error('clicks', string.byte(h, 1)) end
h = h or string.char(LAYOUT)
local n = (#h - 1) / REC
local newest = nil
if n > 0 then newest = struct.unpack('<i6', h, 2 + REC * (n - 1) + 8) end

local profile = redis.call('GET', KEYS[4])
local function readable(value) return string.byte(value, 1) == LAYOUT or string.byte(value, 1) == OLD_LAYOUT end
if profile and not readable(profile) then return layout_error('profile', string.byte(profile, 1)) end
local recs, long_term = nil, false
if profile then
  local d, k = struct.unpack('<HB', profile, 2)
  recs = string.sub(profile, 25 + 12 * d, 24 + 12 * d + 8 * k)
  long_term = string.sub(profile, 25 + 4 * d, 24 + 8 * d)
end
local function rank_of(item)
  if not recs then return -1 end
  local at = string.find(recs, item, 1, true)
  while at do
    if (at - 1) % 8 == 0 then return (at - 1) / 8 + 1 end
    at = string.find(recs, item, at + 1, true)
  end
  return 0
end

-- The hashes of the user's last LATE_KEPT late events of each stream (meta fields 'late:c', 'late:t'), read
-- only when needed: a replay of a late event is late again, so a batch retried (or a worker restarted) after
-- the Redis step but before its 'late' dead letters went out publishes them then, instead of losing them.
local LATE_KEPT = 32
local late_rings, late_changed = {}, {}
local function was_late(stream, event)
  late_rings[stream] = late_rings[stream] or redis.call('HGET', meta, 'late:' .. stream) or ''
  return holds(late_rings[stream], event, 1, 6)
end
local function mark_late(stream, event)
  if was_late(stream, event) then return end
  local ring = late_rings[stream] .. event
  if #ring > 6 * LATE_KEPT then ring = string.sub(ring, #ring - 6 * LATE_KEPT + 1) end
  late_rings[stream], late_changed[stream] = ring, true
end

-- Clicks.
local n_clicks = tonumber(ARGV[6])
local fence = tonumber(redis.call('HGET', meta, ARGV[1]) or '-1')
local outcomes, ranks, added, added_ts, fresh = {}, {}, {}, {}, {}
local in_order = true
local i = 7
for _ = 1, n_clicks do
  local offset, rec = tonumber(ARGV[i]), ARGV[i + 1]
  i = i + 2
  local outcome, rank = 'r', -1
  local event = string.sub(rec, 15, 20)
  if offset > fence then
    local ts = struct.unpack('<i6', rec, 9)
    if fresh[event] or holds(h, event, 16, REC) then
      outcome = 'd'
    elseif newest and ts < newest - lateness then
      outcome = 'l'
      mark_late('c', event)
    else
      if newest and ts < newest then in_order = false end
      if not newest or ts > newest then newest = ts end
      fresh[event] = true
      added[#added + 1], added_ts[#added_ts + 1] = rec, ts
      outcome, rank = 'a', rank_of(string.sub(rec, 1, 8))
    end
    fence = offset
  elseif was_late('c', event) then
    outcome = 'l'
  end
  outcomes[#outcomes + 1], ranks[#ranks + 1] = outcome, rank
end
if #added > 0 then
  if in_order then
    h = h .. table.concat(added)
  else  -- merge by (time, arrival): an event later in the log goes after an equal time
    local all = {}
    for k = 1, n do
      local at = 2 + REC * (k - 1)
      all[k] = {struct.unpack('<i6', h, at + 8), k, string.sub(h, at, at + REC - 1)}
    end
    for k = 1, #added do all[n + k] = {added_ts[k], n + k, added[k]} end
    table.sort(all, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
    local parts = {string.char(LAYOUT)}
    for k = 1, #all do parts[k + 1] = all[k][3] end
    h = table.concat(parts)
  end
  local total, limit = (#h - 1) / REC, tonumber(ARGV[3])
  if total > limit then h = string.char(LAYOUT) .. string.sub(h, 2 + REC * (total - limit)) end
  redis.call('SET', KEYS[1], h)
  redis.call('HINCRBY', meta, 'applied:c', #added)
end
if n_clicks > 0 then redis.call('HSET', meta, ARGV[1], fence) end

-- Texts.
local t = redis.call('GET', KEYS[2])
if t and not readable(t) then return layout_error('texts', string.byte(t, 1)) end
local dim, count, folded, tnewest, mean, ring = 0, 0, 0, nil, '', ''
if t then
  local _, d0, c0, f0, low, high = struct.unpack('<BHIIIHB', t)
  dim, count, folded, tnewest = d0, c0, f0, low + high * 4294967296
  mean, ring = string.sub(t, 19, 18 + 2 * dim), string.sub(t, 19 + 2 * dim)
end
local keep = 6 * tonumber(ARGV[4])
local tfence = tonumber(redis.call('HGET', meta, ARGV[2]) or '-1')
local text_outcomes, applied_t, n_texts = {}, 0, 0
while i <= #ARGV do
  local offset, ts, event, emb = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  i, n_texts = i + 4, n_texts + 1
  local outcome = 'r'
  if offset > tfence then
    if holds(ring, event, 1, 6) then
      outcome = 'd'
    elseif tnewest and ts < tnewest - lateness then
      outcome = 'l'
      mark_late('t', event)
    else
      outcome, applied_t, count = 'a', applied_t + 1, count + 1
      if not tnewest or ts > tnewest then tnewest = ts end
      ring = ring .. event
      if #ring > keep then ring = string.sub(ring, #ring - keep + 1) end
      if #emb > 0 then
        if #emb / 2 ~= dim or folded == 0 then  -- the first embedding, or a text encoder of another width
          dim, folded, mean = #emb / 2, 1, emb
        else
          folded = folded + 1
          local fmt = '<' .. string.rep('h', dim)
          local m, x = {struct.unpack(fmt, mean)}, {struct.unpack(fmt, emb)}
          for j = 1, dim do
            local v = m[j] + (x[j] - m[j]) / folded
            if v >= 0 then m[j] = math.floor(v + 0.5) else m[j] = -math.floor(0.5 - v) end
          end
          mean = struct.pack(fmt, unpack(m, 1, dim))
        end
      end
    end
    tfence = offset
  elseif was_late('t', event) then
    outcome = 'l'
  end
  text_outcomes[#text_outcomes + 1] = outcome
end
if applied_t > 0 then
  t = struct.pack('<BHIIIHB', LAYOUT, dim, count, folded, tnewest % 4294967296,
                  math.floor(tnewest / 4294967296), #ring / 6) .. mean .. ring
  redis.call('SET', KEYS[2], t)
  redis.call('HINCRBY', meta, 'applied:t', applied_t)
end
if n_texts > 0 then redis.call('HSET', meta, ARGV[2], tfence) end
for stream in pairs(late_changed) do redis.call('HSET', meta, 'late:' .. stream, late_rings[stream]) end

local click_outcomes = table.concat(outcomes)
if #added + applied_t == 0 then
  return {click_outcomes, ranks, table.concat(text_outcomes), false, false, 0, false}
end
local clicks_applied = tonumber(redis.call('HGET', meta, 'applied:c') or '0')
return {click_outcomes, ranks, table.concat(text_outcomes), h, t or false, clicks_applied, long_term}
"""

# KEYS[1] offsets hash; ARGV[1] partition, ARGV[2] offset. Never moves backwards.
ADVANCE_OFFSET = r"""
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return current
"""

# A refresh's profile for one user, atomically with its new version.
# KEYS: meta, profile. ARGV: [1] the profile value (`state.layout.pack_profile`,
# version slots zeroed), [2] a bit mask of the interests this refresh changed
# (bit i for INTEREST_NAMES[i]). Each changed interest's slot becomes the new
# user version, so a consumer can tell which interests moved at which version.
# Returns {new version, the five interest versions (0: never)}.
WRITE_PROFILE = r"""
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local old = redis.call('GET', KEYS[2])
local v = {0, 0, 0, 0, 0}
if old and (string.byte(old, 1) == 3 or string.byte(old, 1) == 2) then v = {struct.unpack('<IIIII', old, 5)} end
local mask = tonumber(ARGV[2])
for j = 1, 5 do
  if bit.band(mask, bit.lshift(1, j - 1)) ~= 0 then v[j] = version end
end
local new = ARGV[1]
redis.call('SET', KEYS[2], string.sub(new, 1, 4) .. struct.pack('<IIIII', v[1], v[2], v[3], v[4], v[5]) ..
                           string.sub(new, 25))
return {version, v[1], v[2], v[3], v[4], v[5]}
"""

# Pending marks of one partition: a hash user -> the offset of the batch that
# marked the user. KEYS[1] the hash; ARGV pairs (user, offset). A mark is
# cleared only while it still holds that offset: a later batch that marked the
# same user again (applied before this one published) keeps its mark.
CLEAR_PENDING = r"""
local cleared = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    cleared = cleared + 1
  end
end
return cleared
"""


# The live catalogue (KEYS: items hash, changes stream). ARGV: [1] the stream's
# approximate bound, then pairs (item id, value); a value starts with its ts
# and a space. The newest ts wins, an equal ts the later upsert; an upsert equal
# to the stored one, or older, changes nothing. Returns one letter per upsert
# (a applied, s stale).
APPLY_ITEMS = r"""
local outcomes = {}
for i = 2, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  local ts = tonumber(string.match(ARGV[i + 1], '^%d+'))
  if old == ARGV[i + 1] or (old and tonumber(string.match(old, '^%d+')) > ts) then
    outcomes[#outcomes + 1] = 's'
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'item', ARGV[i], 'value', ARGV[i + 1])
    outcomes[#outcomes + 1] = 'a'
  end
end
return table.concat(outcomes)
"""
