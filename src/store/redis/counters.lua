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
-- KEYS[i]: counter key i. ARGV: 8 values per key:
--   algorithm (0 fixed window, 1 sliding window, 2 token bucket), limit,
--   window (µs), burst, hits, charge refused hits (0/1), dry run (0/1),
--   refund of (µs of the take to give back; 0 = decide normally).
-- Returns 5 integers per key: allowed (0/1), remaining, reset after (µs),
-- retry after (µs, -1 when allowed), decided at (µs).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- One string.match / string.format per state: the state is read and
-- written on every decision, and Lua's string handling is most of the
-- script's cost.
local function parse1(raw)
  return tonumber(raw) or 0
end

local function parse2(raw)
  if raw then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    if a then return tonumber(a), tonumber(b) end
  end
  return 0, 0
end

local function parse3(raw)
  if raw then
    local a, b, c = string.match(raw, '^(%d+):(%d+):(%d+)$')
    if a then return tonumber(a), tonumber(b), tonumber(c) end
  end
  return 0, 0, 0
end

local function fixed(raw, limit, w, hits, always)
  local ws, count = parse2(raw)
  local cur = now - (now % w)
  if ws < cur then
    ws, count = cur, 0
  end
  local reset = math.min(ws + w - now, w)
  local wanted = count + hits
  local allowed = wanted <= limit
  if allowed or always then
    count = wanted
  end
  local retry = -1
  if not allowed then retry = reset end
  return allowed, math.max(limit - count, 0), reset, retry, string.format('%d:%d', ws, count), ws + w
end

local function sliding_retry(cur, prev, limit, w, e, hits)
  local to_end = w - e
  local room = limit - cur - hits
  if room >= 0 then
    if prev == 0 then return 1 end
    local t = math.max(to_end - math.floor(room * w / prev), 0)
    if t < to_end then return math.max(t, 1) end
  end
  local offset = 0
  if cur > 0 then
    offset = math.max(w - math.floor((limit - hits) * w / cur), 0)
  end
  return to_end + offset
end

local function sliding(raw, limit, w_us, hits)
  local ws, cur, prev = parse3(raw)
  local cs = now - (now % w_us)
  if ws >= cs then
    -- same window, or the clock stepped back: keep it
  elseif ws + w_us == cs then
    ws, cur, prev = cs, 0, cur
  else
    ws, cur, prev = cs, 0, 0
  end
  local lag = math.max(ws - now, 0)
  local elapsed_us = math.min(math.max(now - ws, 0), w_us)
  local w = math.max(math.floor(w_us / 1000), 1)
  local e = math.min(math.floor(elapsed_us / 1000), w)
  local cap = limit * w
  local wp = prev * (w - e)
  local wanted = cur + hits
  local allowed = wanted <= limit and wp + wanted * w <= cap
  if allowed then cur = wanted end
  local remaining = math.floor(math.max(cap - (wp + cur * w), 0) / w)
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
      retry = math.max(wait_ms * 1000 - (elapsed_us % 1000), 1)
    end
    retry = retry + lag
  end
  return allowed, remaining, reset + lag, retry, string.format('%d:%d:%d', ws, cur, prev), ws + 2 * w_us
end

local function interval(limit, w)
  limit = math.max(limit, 1)
  return math.floor((w + limit - 1) / limit)
end

local function bucket(raw, limit, w, burst, hits)
  local step = interval(limit, w)
  if limit == 0 then burst = 0 else burst = math.max(burst, 1) end
  local tat = math.max(parse1(raw), now)
  local new_tat = tat + hits * step
  local horizon = now + burst * step
  local allowed = hits <= burst and new_tat <= horizon
  if allowed then tat = new_tat end
  local reset = math.max(tat - now, 0)
  local retry = -1
  if not allowed then
    if hits > burst then retry = math.max(reset, 1) else retry = new_tat - horizon end
  end
  return allowed, math.floor(math.max(horizon - tat, 0) / step), reset, retry, string.format('%d', tat), tat
end

local function refund(algo, raw, limit, w, hits, taken_at)
  local taken_window = taken_at - (taken_at % w)
  if algo == 0 then
    local ws, count = parse2(raw)
    if ws == taken_window then count = math.max(count - hits, 0) end
    return string.format('%d:%d', ws, count)
  elseif algo == 1 then
    local ws, cur, prev = parse3(raw)
    if ws == taken_window then
      cur = math.max(cur - hits, 0)
    elseif ws == taken_window + w then
      prev = math.max(prev - hits, 0)
    end
    return string.format('%d:%d:%d', ws, cur, prev)
  end
  return string.format('%d', math.max(parse1(raw) - hits * interval(limit, w), 0))
end

-- One MGET for every key, and writes deferred to the end: a call may carry
-- the counters of many coalesced requests, often on the same hot key, and
-- each redis.call costs more than the arithmetic around it. Later counters
-- on a key see the earlier ones' state through `state`, so the result is the
-- same as deciding them one call at a time.
local stored = redis.call('MGET', unpack(KEYS))
local state = {}   -- key -> latest raw value in this call (false: none)
local writes = {}  -- key -> {value, ttl ms (0: keep the TTL, -1: delete)}
local order = {}   -- keys to write, first-touched first

local function write(key, value, ttl_ms)
  if writes[key] == nil then order[#order + 1] = key end
  writes[key] = {value, ttl_ms}
  state[key] = value
end

local out = {}
for i = 1, #KEYS do
  local b = (i - 1) * 8
  local algo = tonumber(ARGV[b + 1])
  local limit = tonumber(ARGV[b + 2])
  local w = tonumber(ARGV[b + 3])
  local burst = tonumber(ARGV[b + 4])
  local hits = tonumber(ARGV[b + 5])
  local always = ARGV[b + 6] == '1'
  local dry = ARGV[b + 7] == '1'
  local taken_at = tonumber(ARGV[b + 8])
  local key = KEYS[i]
  local raw = state[key]
  if raw == nil then raw = stored[i] end

  if taken_at > 0 then
    if raw then
      local keep = 0
      if writes[key] and writes[key][2] ~= 0 then keep = writes[key][2] end
      write(key, refund(algo, raw, limit, w, hits, taken_at), keep)
    end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = 0, 0, 0, -1, now
  else
    local allowed, remaining, reset, retry, value, expires
    if algo == 0 then
      allowed, remaining, reset, retry, value, expires = fixed(raw, limit, w, hits, always)
    elseif algo == 1 then
      allowed, remaining, reset, retry, value, expires = sliding(raw, limit, w, hits)
    else
      allowed, remaining, reset, retry, value, expires = bucket(raw, limit, w, burst, hits)
    end
    if not dry then
      local ttl_ms = math.ceil((expires - now) / 1000)
      if ttl_ms > 0 then
        write(key, value, ttl_ms)
      elseif raw then
        write(key, false, -1)
      end
    end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = allowed and 1 or 0, remaining, reset, retry, now
  end
end

for _, key in ipairs(order) do
  local value, ttl_ms = writes[key][1], writes[key][2]
  if ttl_ms > 0 then
    redis.call('SET', key, value, 'PX', ttl_ms)
  elseif ttl_ms == 0 then
    redis.call('SET', key, value, 'KEEPTTL')
  else
    redis.call('DEL', key)
  end
end
return out
