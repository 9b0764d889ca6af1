#!lua
-- tollgate: decide and update a batch of counters on one Redis, atomically.
--
-- The same algorithms as src/algorithm/*.rs, on the same integers: every
-- value stays below 2^53 (limits files reject larger ones), so Lua's doubles
-- compute exactly what the Rust code does. Time comes from this server's
-- TIME, so every tollgate replica sharing it agrees on the windows.
--
-- A script rather than MULTI/EXEC: the decision needs the current value
-- (read, decide, write) inside one atomic step, which MULTI cannot express.
--
-- The `#!lua` line (Redis 7+) declares the script as writing: a cluster
-- replica that was just demoted then answers MOVED, which makes the client
-- follow the failover, instead of running it and failing with READONLY.
--
-- KEYS[i]: counter key i. ARGV[1]: 8 little-endian doubles per key (64
-- bytes each, in KEYS order):
--   algorithm (0 fixed window, 1 sliding window, 2 token bucket), limit,
--   window (µs), burst, hits, charge refused hits (0/1), dry run (0/1),
--   refund of (µs of the take to give back; 0 = decide normally).
-- Binary rather than 8 decimal arguments per key: struct.unpack reads them
-- without a Lua string per value or a strtod each, which was a fifth of the
-- script's cost (callgrind, 30 keys per call).
-- Returns one string: 5 little-endian doubles per key (40 bytes, in KEYS
-- order): allowed (0/1), remaining, reset after (µs), retry after (µs, -1
-- when allowed), decided at (µs). One string rather than an array of
-- integers: Redis encodes, and the client parses, one value per call.

local min, max, floor, ceil = math.min, math.max, math.floor, math.ceil
local pack, unpack_at = struct.pack, struct.unpack

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- A counter's state is stored as little-endian doubles: window start and
-- count (fixed window, 16 bytes); window start, current and previous count
-- (sliding window, 24 bytes); theoretical arrival time (token bucket, 8
-- bytes). Binary rather than text: formatting and parsing decimal text was
-- a fifth of the script's cost. A value of any other length reads as no
-- state. The fixed and sliding windows also say whether the stored window
-- is still current (`keep`): its TTL is then already right, and
-- SET ... KEEPTTL skips setting a new one.
local function parse1(raw)
  if raw and #raw == 8 then return (unpack_at('<d', raw)) end
  return 0
end

local function parse2(raw)
  if raw and #raw == 16 then
    local a, b = unpack_at('<dd', raw)
    return a, b
  end
  return 0, 0
end

local function parse3(raw)
  if raw and #raw == 24 then
    local a, b, c = unpack_at('<ddd', raw)
    return a, b, c
  end
  return 0, 0, 0
end

local function fixed(raw, limit, w, hits, always)
  local ws, count = parse2(raw)
  local cur = now - (now % w)
  local keep = ws >= cur
  if not keep then
    ws, count = cur, 0
  end
  local reset = min(ws + w - now, w)
  local wanted = count + hits
  local allowed = wanted <= limit
  if allowed or always then
    count = wanted
  end
  local retry = -1
  if not allowed then retry = reset end
  return allowed, max(limit - count, 0), reset, retry, pack('<dd', ws, count), ws + w, keep
end

local function sliding_retry(cur, prev, limit, w, e, hits)
  local to_end = w - e
  local room = limit - cur - hits
  if room >= 0 then
    if prev == 0 then return 1 end
    local t = max(to_end - floor(room * w / prev), 0)
    if t < to_end then return max(t, 1) end
  end
  local offset = 0
  if cur > 0 then
    offset = max(w - floor((limit - hits) * w / cur), 0)
  end
  return to_end + offset
end

local function sliding(raw, limit, w_us, hits)
  local ws, cur, prev = parse3(raw)
  local cs = now - (now % w_us)
  local keep = ws >= cs
  if keep then
    -- same window, or the clock stepped back: keep it
  elseif ws + w_us == cs then
    ws, cur, prev = cs, 0, cur
  else
    ws, cur, prev = cs, 0, 0
  end
  local lag = max(ws - now, 0)
  local elapsed_us = min(max(now - ws, 0), w_us)
  local w = max(floor(w_us / 1000), 1)
  local e = min(floor(elapsed_us / 1000), w)
  local cap = limit * w
  local wp = prev * (w - e)
  local wanted = cur + hits
  local allowed = wanted <= limit and wp + wanted * w <= cap
  if allowed then cur = wanted end
  local remaining = floor(max(cap - (wp + cur * w), 0) / w)
  local to_end = w_us - elapsed_us
  local reset = 0
  if cur > 0 then
    reset = to_end + w_us
  elseif prev > 0 then
    reset = to_end
  end
  local retry = -1
  if not allowed then
    if hits > limit then
      retry = reset
    else
      local wait_ms = sliding_retry(cur, prev, limit, w, e, hits)
      retry = max(wait_ms * 1000 - (elapsed_us % 1000), 1)
    end
    retry = retry + lag
  end
  return allowed, remaining, reset + lag, retry, pack('<ddd', ws, cur, prev), ws + 2 * w_us, keep
end

local function interval(limit, w)
  limit = max(limit, 1)
  return floor((w + limit - 1) / limit)
end

local function bucket(raw, limit, w, burst, hits)
  local step = interval(limit, w)
  if limit == 0 then burst = 0 else burst = max(burst, 1) end
  local tat = max(parse1(raw), now)
  local new_tat = tat + hits * step
  local horizon = now + burst * step
  local allowed = hits <= burst and new_tat <= horizon
  if allowed then tat = new_tat end
  local reset = max(tat - now, 0)
  local retry = -1
  if not allowed then
    if hits > burst then retry = max(reset, 1) else retry = new_tat - horizon end
  end
  return allowed, floor(max(horizon - tat, 0) / step), reset, retry, pack('<d', tat), tat, false
end

local function refund(algo, raw, limit, w, hits, taken_at)
  local taken_window = taken_at - (taken_at % w)
  if algo == 0 then
    local ws, count = parse2(raw)
    if ws == taken_window then count = max(count - hits, 0) end
    return pack('<dd', ws, count)
  elseif algo == 1 then
    local ws, cur, prev = parse3(raw)
    if ws == taken_window then
      cur = max(cur - hits, 0)
    elseif ws == taken_window + w then
      prev = max(prev - hits, 0)
    end
    return pack('<ddd', ws, cur, prev)
  end
  return pack('<d', max(parse1(raw) - hits * interval(limit, w), 0))
end

-- One MGET for every key, and writes deferred to the end: a call may carry
-- the counters of many coalesced requests, often on the same hot key, and
-- each redis.call costs more than the arithmetic around it. Later counters
-- on a key see the earlier ones' state through `state`, so the result is the
-- same as deciding them one call at a time.
local stored = redis.call('MGET', unpack(KEYS))
local state = {}   -- key -> latest value in this call (false: deleted)
local ttls = {}    -- key -> TTL to write in ms (0: keep the TTL, -1: delete)
local order = {}   -- keys to write, first-touched first

local function write(key, value, ttl_ms)
  local pending = ttls[key]
  if pending == nil then
    order[#order + 1] = key
  elseif ttl_ms == 0 and pending > 0 then
    -- an earlier counter in this call started the window: its TTL stands
    ttl_ms = pending
  end
  ttls[key] = ttl_ms
  state[key] = value
end

local args = ARGV[1]
local out = {}
for i = 1, #KEYS do
  local algo, limit, w, burst, hits, always, dry, taken_at = unpack_at('<dddddddd', args, (i - 1) * 64 + 1)
  local key = KEYS[i]
  local raw = state[key]
  if raw == nil then raw = stored[i] end

  if taken_at > 0 then
    if raw then
      write(key, refund(algo, raw, limit, w, hits, taken_at), 0)
    end
    out[i] = pack('<ddddd', 0, 0, 0, -1, now)
  else
    local allowed, remaining, reset, retry, value, expires, keep
    if algo == 0 then
      allowed, remaining, reset, retry, value, expires, keep = fixed(raw, limit, w, hits, always == 1)
    elseif algo == 1 then
      allowed, remaining, reset, retry, value, expires, keep = sliding(raw, limit, w, hits)
    else
      allowed, remaining, reset, retry, value, expires, keep = bucket(raw, limit, w, burst, hits)
    end
    if dry ~= 1 then
      local ttl_ms = ceil((expires - now) / 1000)
      if ttl_ms <= 0 then
        if raw then write(key, false, -1) end
      elseif keep then
        write(key, value, 0)
      else
        write(key, value, ttl_ms)
      end
    end
    out[i] = pack('<ddddd', allowed and 1 or 0, remaining, reset, retry, now)
  end
end

for _, key in ipairs(order) do
  local ttl_ms = ttls[key]
  if ttl_ms > 0 then
    redis.call('SET', key, state[key], 'PX', ttl_ms)
  elseif ttl_ms == 0 then
    redis.call('SET', key, state[key], 'KEEPTTL')
  else
    redis.call('DEL', key)
  end
end
return table.concat(out)
