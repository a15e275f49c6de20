"""The Redis key layout and the one Lua script every Redis operation of the hub goes through.

Per project `p` (the `{p}` hash tag keeps all of them in one Cluster slot):

    <prefix>:{p}:seq      counter: the last seq assigned (missing -> a new epoch starts)
    <prefix>:{p}:epoch    the epoch string, created together with the counter
    <prefix>:{p}:events   Stream; entry id `<seq>-0`, fields v:
                          "<epoch> <ts> <type> <key length or -> <key><data>"
                          and n: the size of the event's frame (the retention_bytes unit)
    <prefix>:{p}:snap     hash: key -> "<seq> <ts> <type> <data>" (latest event per key)
    <prefix>:{p}:snapidx  sorted set: key -> seq, to drop the least recently updated key
    <prefix>:{p}:snapmeta hash: `bytes` of the snap hash's values, `truncated` once a bound
                          dropped a key in this epoch, `stream_bytes`: the sum of the
                          retained entries' n, `primary`: the replication id of the
                          primary that wrote last (a failover is seen as a new one)
    <prefix>:{p}:id:<id>  "<epoch> <seq>" with a TTL: publish idempotency

The script runs atomically, so seqs stay contiguous with any number of publishers, and a lost
counter can never be mistaken for a live one: with no counter (or no epoch) a publish starts a
new epoch, drops the old life's stream and snapshot, and counts from 1 again.

Only a publish writes: a read of a project with no live sequence answers an empty view (head
0) and creates no key. Its epoch is the one the first publish will take, derived alike by
every hub from the key name and the hour it starts in (the key TTL if shorter: a life that
expired began at least one TTL earlier, so the next one gets another epoch). When there is
evidence of an earlier life (an epoch key left beside a lost counter, or a caller that saw
seqs in another epoch) the data was lost: reads answer an epoch derived from that evidence
and the publish starts a random one, so every client holding a seq is told `gap`.

Retention (issue 17) is the memory backend's: a read first, a publish last (and before it
honours an id), drops entries from the oldest while there are more than retention_events,
their frames sum to more than retention_bytes, or the oldest is older than retention_age_s by
its publish time (Redis's clock). Entry ids are
seqs, not times, so age is read from the entries' `ts`, and the cut is one exact
`XTRIM MINID <first kept seq>`. Each entry is looked at once when it goes, so a publish pays
O(1) amortised. A read trims too (as memory's reads do) but creates no key.
"""

from __future__ import annotations

__all__ = ["HUB_SCRIPT", "ProjectKeys"]


class ProjectKeys:
    """The keys of one project, in the order the script takes them."""

    __slots__ = ("epoch", "events", "id_prefix", "seq", "snap", "snapidx", "snapmeta")

    def __init__(self, prefix: str, project: str) -> None:
        base = f"{prefix}:{{{project}}}"
        self.seq = f"{base}:seq"
        self.epoch = f"{base}:epoch"
        self.events = f"{base}:events"
        self.snap = f"{base}:snap"
        self.snapidx = f"{base}:snapidx"
        self.snapmeta = f"{base}:snapmeta"
        self.id_prefix = f"{base}:id:"

    def script_keys(self) -> list[str]:
        return [self.seq, self.epoch, self.events, self.snap, self.snapidx, self.snapmeta]

    def id_key(self, idempotency_id: str) -> str:
        return self.id_prefix + idempotency_id


# KEYS: seq, epoch, events, snap, snapidx, snapmeta, then one key per idempotency id.
# ARGV[1] op: "position" | "read" | "snapshot" | "publish"; ARGV[2] a fresh random epoch
# (used only if a new one must start); ARGV[3] key TTL in ms (0: none); ARGV[4], ARGV[5] the
# epoch and the highest seq the caller has seen ("", 0: none): a counter below it was
# restored from an older copy (RDB, AOF everysec, a failover), so a new epoch starts.
# ARGV[6], ARGV[7], ARGV[8]: retention bounds: events, bytes, age in ms.
#   read:     ARGV[9] since, ARGV[10] limit
#   publish:  ARGV[9] snapshot key bound, ARGV[10] id TTL ms, ARGV[11] n, ARGV[12] snapshot
#             byte bound, then 6 per event: type, has_key ("0"/"1"), key, id key index
#             (0: none), data, frame size less the digits of seq and ts
# The last ARGV of every op: 'wait' if writers WAIT for a replica before acknowledging
# (then a promoted replica holds every acknowledged write and keeps the epoch), else 'async'.
# Every op returns {epoch, head, oldest, ...}: read adds the XRANGE entries, snapshot the
# snap hash (flat) and 1 if keys were dropped from it, publish one seq per event (negated
# for an event whose id was seen before: its earlier seq, nothing added).
HUB_SCRIPT = r"""
local seq_key, epoch_key, events_key = KEYS[1], KEYS[2], KEYS[3]
local snap_key, index_key, meta_key = KEYS[4], KEYS[5], KEYS[6]
local op, ttl = ARGV[1], tonumber(ARGV[3])

local function keep(key)
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local max_events, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local max_age_ms = tonumber(ARGV[8])

local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local function entry_bytes(fields)
  for j = 3, #fields, 2 do
    if fields[j] == 'n' then return tonumber(fields[j + 1]) end
  end
  return #fields[2]  -- written before frame sizes were stored: its packed value instead
end

-- Drop entries from the oldest while a retention bound is exceeded (as the memory backend's
-- trim); returns the oldest seq retained (head + 1 when none).
local function trim(head)
  local length = redis.call('XLEN', events_key)
  if length == 0 then
    -- the stream expired or was emptied: nothing is held
    if redis.call('HEXISTS', meta_key, 'stream_bytes') == 1 then
      redis.call('HDEL', meta_key, 'stream_bytes')
    end
    return head + 1
  end
  local bytes = tonumber(redis.call('HGET', meta_key, 'stream_bytes') or '0')
  local horizon = now_ms() - max_age_ms
  local start, kept, cut, step = '-', nil, nil, 1
  while not kept do
    -- what the count bound drops, and one more to look at: doubling while all of it went
    local want = math.min(math.max(length - max_events, 0) + step, 100)
    step = step * 2
    local batch = redis.call('XRANGE', events_key, start, '+', 'COUNT', want)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      local ts = tonumber(string.match(entry[2][2], '^%S+ (%d+)'))
      if length > max_events or bytes > max_bytes or ts < horizon then
        length = length - 1
        bytes = bytes - entry_bytes(entry[2])
        cut = seq_of(entry[1])
      else
        kept = seq_of(entry[1])
        break
      end
    end
    start = '(' .. batch[#batch][1]
  end
  if cut then
    redis.call('XTRIM', events_key, 'MINID', (cut + 1) .. '-0')
    if length == 0 or bytes < 0 then bytes = 0 end
    local ttl_left = redis.call('PTTL', events_key)
    redis.call('HSET', meta_key, 'stream_bytes', bytes)
    -- a read may trim: the hash must not outlive the stream (nor be created without a TTL)
    if ttl_left > 0 then redis.call('PEXPIRE', meta_key, ttl_left) end
  end
  return kept or head + 1
end

local head = tonumber(redis.call('GET', seq_key) or '')
local epoch = redis.call('GET', epoch_key)
local live = head and epoch
if live then
  -- a counter behind its own stream was restored from somewhere else: never reuse a seq
  local top = redis.call('XREVRANGE', events_key, '+', '-', 'COUNT', 1)[1]
  if top and seq_of(top[1]) > head then live = false end
  -- a counter behind what a hub already saw in this epoch went back in time
  if live and epoch == ARGV[4] and head < tonumber(ARGV[5]) then live = false end
end
-- The primary this sequence was written on (snapmeta `primary`, its replication id). A
-- replica promoted since (its replid2 names an older history) may lack writes the old
-- primary acknowledged (asynchronous replication): counting on from its counter could
-- reuse their seqs, so a new epoch starts, unless every writer waited for a replica before
-- acknowledging (WAIT; the last ARGV is 'wait'). A restarted primary keeps its epoch.
local primary, promoted_from = nil, nil
local replication = redis.pcall('INFO', 'replication')
if type(replication) == 'string' then
  primary = string.match(replication, 'master_replid:(%x+)')
  promoted_from = string.match(replication, 'master_replid2:(%x+)')
end
local written_on = redis.call('HGET', meta_key, 'primary')
local moved = live and primary and written_on and written_on ~= primary
  and ARGV[#ARGV] ~= 'wait' and promoted_from and string.find(promoted_from, '[^0]')
if moved then live = false end
if not live then
  local evidence = epoch or ''
  if moved then evidence = evidence .. '@' .. primary end
  if ARGV[4] ~= '' and tonumber(ARGV[5]) > 0 then evidence = evidence .. '|' .. ARGV[4] end
  local next_epoch
  if evidence == '' then
    -- a first life, as far as anyone knows: every hub derives the same epoch for it, from
    -- the hour (or key TTL, if shorter) it starts in
    local period_s = 3600
    if ttl > 0 and ttl < period_s * 1000 then period_s = math.ceil(ttl / 1000) end
    local period = math.floor(tonumber(redis.call('TIME')[1]) / period_s)
    next_epoch = string.sub(redis.sha1hex(epoch_key .. ' ' .. period), 1, 12)
  elseif op == 'publish' then
    next_epoch = ARGV[2]  -- after a loss: a fresh epoch, never one a client may hold
  else
    next_epoch = string.sub(redis.sha1hex(epoch_key .. ' ' .. evidence), 1, 12)
  end
  if op == 'position' then
    return {next_epoch, 0, 1}
  elseif op == 'read' then
    return {next_epoch, 0, 1, {}}
  elseif op == 'snapshot' then
    return {next_epoch, 0, 1, {}, 0}
  elseif op ~= 'publish' then
    return redis.error_reply('unknown op ' .. tostring(op))
  end
  epoch, head = next_epoch, 0
  redis.call('DEL', events_key, snap_key, index_key, meta_key)
  redis.call('SET', epoch_key, epoch)
  redis.call('SET', seq_key, 0)
  keep(epoch_key)
  keep(seq_key)
end

-- a publish trims once, at its end (and before honouring an id: an id lives with its event)
local first = nil
if op ~= 'publish' then first = trim(head) end
if op == 'position' then
  return {epoch, head, first}
elseif op == 'read' then
  local since, limit = tonumber(ARGV[9]), tonumber(ARGV[10])
  local entries = redis.call('XRANGE', events_key, (since + 1) .. '-0', '+', 'COUNT', limit)
  return {epoch, head, first, entries}
elseif op == 'snapshot' then
  local truncated = redis.call('HEXISTS', meta_key, 'truncated')
  return {epoch, head, first, redis.call('HGETALL', snap_key), truncated}
elseif op ~= 'publish' then
  return redis.error_reply('unknown op ' .. tostring(op))
end

local snap_max, id_ttl, n = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local snap_bytes_max = tonumber(ARGV[12])
local now = redis.call('TIME')
local ts = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
local result = {epoch, 0, 0}
local keyed = false
local added_bytes = 0
for i = 0, n - 1 do
  local at = 13 + i * 6
  local etype, has_key, ekey, id_index, data =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4]
  local seq = nil
  if id_index > 0 then
    local known = redis.call('GET', KEYS[id_index])
    if known and not first then first = trim(head) end
    if known then
      local known_epoch, known_seq = string.match(known, '^(%S+) (%d+)$')
      known_seq = tonumber(known_seq)
      -- an id is honoured only while its event is retained, and only in its own epoch
      if known_epoch == epoch and known_seq and known_seq >= first then
        seq = -known_seq  -- negative: an earlier event's seq again (the caller counts new ones)
      end
    end
  end
  if not seq then
    head = head + 1
    seq = head
    -- one packed field: a reply of few elements is much cheaper for clients to parse
    local key_part = '- '
    if has_key == '1' then key_part = #ekey .. ' ' .. ekey end
    -- the frame's size: the store measured it but for the digits of seq and ts
    local frame_bytes = tonumber(ARGV[at + 5]) + #tostring(seq) + #ts
    redis.call('XADD', events_key, seq .. '-0',
      'v', epoch .. ' ' .. ts .. ' ' .. etype .. ' ' .. key_part .. data, 'n', frame_bytes)
    added_bytes = added_bytes + frame_bytes
    if has_key == '1' then
      local value = seq .. ' ' .. ts .. ' ' .. etype .. ' ' .. data
      local replaced = redis.call('HSTRLEN', snap_key, ekey)
      redis.call('HSET', snap_key, ekey, value)
      redis.call('HINCRBY', meta_key, 'bytes', #value - replaced)
      redis.call('ZADD', index_key, seq, ekey)
      keyed = true
    end
    if id_index > 0 then
      redis.call('SET', KEYS[id_index], epoch .. ' ' .. seq, 'PX', id_ttl)
    end
  end
  result[#result + 1] = seq
end

redis.call('SET', seq_key, head)
if added_bytes > 0 then redis.call('HINCRBY', meta_key, 'stream_bytes', added_bytes) end
if primary and (written_on ~= primary or not live) then
  redis.call('HSET', meta_key, 'primary', primary)
end
local function drop_oldest_keys(count)
  local dropped = redis.call('ZPOPMIN', index_key, count)
  for j = 1, #dropped, 2 do
    redis.call('HINCRBY', meta_key, 'bytes', -redis.call('HSTRLEN', snap_key, dropped[j]))
    redis.call('HDEL', snap_key, dropped[j])
  end
  redis.call('HSET', meta_key, 'truncated', '1')
end

if keyed then
  local size = redis.call('ZCARD', index_key)
  if size > snap_max then
    drop_oldest_keys(size - snap_max)
    size = snap_max
  end
  -- least recently updated keys go first; the newest stays even alone over the bound
  while size > 1 and tonumber(redis.call('HGET', meta_key, 'bytes') or '0') > snap_bytes_max do
    drop_oldest_keys(1)
    size = size - 1
  end
end
keep(seq_key)
keep(epoch_key)
keep(events_key)
keep(snap_key)
keep(index_key)
keep(meta_key)
result[2] = head
result[3] = trim(head)
return result
"""
