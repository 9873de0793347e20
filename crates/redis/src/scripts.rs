//! The Lua scripts distlock runs on Redis, one per operation. Each runs atomically on the server
//! and takes the six keys of [`crate::keys::Keys::all`] (the batched renewal takes pairs).
//!
//! Kinds: `w` is a mutex or writer (the main key holds the token, as redlock lays it out), `r` a
//! reader and `s` a semaphore permit (members of a sorted set scored by their expiry in server
//! milliseconds, from `TIME`). `s<k>:` is k permits of a semaphore: the members `token`,
//! `token:2` … `token:k`, added, renewed and removed together, so the set's size is the number
//! of permits taken. A waiter queues as the member `kind .. token` of the queue set.

use sha1::{Digest, Sha1};

/// A script and its SHA-1, for `EVALSHA` with an `EVAL` fallback.
#[derive(Debug)]
pub struct Script {
    pub lua: &'static str,
    pub sha: String,
}

impl Script {
    fn new(lua: &'static str) -> Self {
        let sha = Sha1::digest(lua.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { lua, sha }
    }
}

/// `raise(key, floor)`: raises the fencing counter `key` to at least `floor`. A counter that does
/// not exist starts at the server clock in microseconds, as in the acquire: restoring a floor must
/// never leave a counter below what a fresh start would give (the floor may be stale).
const RAISE: &str = r"
local function raise(key, floor)
  local got, v = pcall(redis.call, 'GET', key)
  if not got then return end
  local cur = tonumber(v or '0')
  if not v then
    local c = redis.call('TIME')
    cur = tonumber(c[1]) * 1000000 + tonumber(c[2])
  end
  if cur < floor then cur = floor end
  if (not v) or cur ~= tonumber(v) then redis.call('SET', key, cur) end
end
";

const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// `weight(kind)`: the kind letter and how many permits (`s3:` is `s`, 3; the others count 1).
/// `members(id, n)`: the set members of a grant `id` of n permits; `remove(key, id, n)` takes
/// them out of `key` (in chunks: Lua's `unpack` has a limit) and says how many were there.
const PERMITS: &str = r"
local function weight(kind)
  local k = string.match(kind, '^s(%d+):$')
  if k then return 's', tonumber(k) end
  return kind, 1
end
local function members(id, n)
  local out = {id}
  for i = 2, n do out[i] = id .. ':' .. i end
  return out
end
local function remove(key, id, n)
  local ms, gone = members(id, n), 0
  for i = 1, #ms, 1000 do
    gone = gone + redis.call('ZREM', key, unpack(ms, i, math.min(i + 999, #ms)))
  end
  return gone
end
";

/// How every grant token distlock writes begins. A mutex or writer key whose value lacks it was
/// set by a foreign client (the redlock package, redis-py's `Lock`, a plain `SET NX PX`), whose
/// release publishes no wake-up; the acquire script reports such a holder.
pub const OWN: &str = "dl-";

/// ARGV: kind, grant token, lease ms, max count, wait ms (0: do not queue), fair (1|0), channel,
/// waiter id, fence floor. Returns `{1, fence}` when granted, `{0, hint, foreign}` when busy,
/// where `hint` is the number of ms after which the holder's or a dead waiter's expiry may free
/// the lock (-1: unknown) and `foreign` is 1 when what keeps this waiter out is a foreign
/// holder of the main key (see [`OWN`]; a waiter queued behind one of ours gets 0: it waits for
/// that waiter's release), and `{2}` when the grant token was revoked (its caller gave up on it).
///
/// Each attempt carries a fresh grant token; the waiter id (its place in the queue) stays the
/// same across attempts. A release or revoke of an abandoned attempt can therefore never
/// remove a later attempt's grant. The fencing counter starts at the server's clock (in µs) and
/// never goes below the floor: the largest token this client saw for the name.
const ACQUIRE: &str = r"
local lock, set, fence, queue, dl, revoked = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local kind, permits = weight(ARGV[1])
local id, lease, max = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local waitms, fair, channel = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7]
local me, floor = ARGV[1] .. ARGV[8], tonumber(ARGV[9])

local function bump()
  local ok, n = pcall(redis.call, 'INCR', fence)
  if ok then
    local was = n
    -- A new counter (a new name, or a server that restarted empty or a replica promoted
    -- without it) starts at the server clock in microseconds: above every token an earlier
    -- life of the counter could have handed out (that would take a grant per microsecond).
    if n == 1 then n = tonumber(t[1]) * 1000000 + tonumber(t[2]) end
    if n <= floor then n = floor + 1 end
    if n ~= was then redis.call('SET', fence, n) end
    return n
  end
  if kind == 'w' then redis.call('DEL', lock) else remove(set, id, permits) end
  return redis.error_reply('WRONGTYPE the fencing counter ' .. fence .. ' is not an integer')
end

-- The uncontended mutex or writer: no readers, no queue and no revoked attempt for the name
-- (one EXISTS), and nobody holds it (SET NX). The general path below would decide the same.
if kind == 'w' and redis.call('EXISTS', set, queue, revoked) == 0
  and redis.call('SET', lock, id, 'NX', 'PX', lease) then
  return {1, bump()}
end

if redis.call('ZSCORE', revoked, id) then return {2} end

local holder = false
if kind ~= 's' then holder = redis.call('GET', lock) end
-- A command retried after a dropped connection finds its own grant.
if kind == 'w' and holder == id then
  redis.call('PEXPIRE', lock, lease)
  return {1, bump()}
end
if kind ~= 'w' and redis.call('ZSCORE', set, id) then
  return {1, bump()}
end

redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
local count = redis.call('ZCARD', set)
local free
if kind == 'w' then free = (not holder) and count == 0
elseif kind == 'r' then free = not holder
else free = count + permits <= max end

local hint = -1
local function soonest(ms) if ms > 0 and (hint < 0 or ms < hint) then hint = ms end end

local turn = true
if fair then
  local head
  for _ = 1, 16 do
    head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then break end
    local d = tonumber(redis.call('HGET', dl, head) or '0')
    if d > now then break end
    redis.call('ZREM', queue, head)
    redis.call('HDEL', dl, head)
    head = nil
  end
  if head and head ~= me then
    local rank = redis.call('ZRANK', queue, me)
    if kind == 'w' then
      turn = false
    elseif kind == 'r' then
      -- Readers pass readers, never a writer that queued before them.
      for _, m in ipairs(redis.call('ZRANGE', queue, 0, rank and rank - 1 or -1)) do
        if string.sub(m, 1, 1) == 'w' then turn = false break end
      end
    else
      -- Permits go in queue order: this one's and every earlier waiter's must fit.
      local want = permits
      for _, m in ipairs(redis.call('ZRANGE', queue, 0, rank and rank - 1 or -1)) do
        local _, n = weight(string.match(m, '^(s%d+:)') or 's')
        want = want + n
      end
      turn = want <= max - count
    end
    if not turn then soonest(tonumber(redis.call('HGET', dl, head) or '0') - now) end
  end
end

if free and turn then
  if kind == 'w' then
    redis.call('SET', lock, id, 'PX', lease)
  else
    for _, m in ipairs(members(id, permits)) do redis.call('ZADD', set, now + lease, m) end
    if redis.call('PTTL', set) < lease then redis.call('PEXPIRE', set, lease) end
  end
  if fair and redis.call('ZREM', queue, me) == 1 then
    redis.call('HDEL', dl, me)
    -- Others behind a reader or a permit may be able to go too.
    if kind ~= 'w' and redis.call('ZCARD', queue) > 0 then redis.call('PUBLISH', channel, '*') end
  end
  return {1, bump()}
end

local foreign = 0
if holder then
  soonest(redis.call('PTTL', lock))
  if turn and string.sub(holder, 1, #OWN) ~= OWN then foreign = 1 end
end
if count > 0 and kind ~= 'r' then
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] then soonest(tonumber(first[2]) - now) end
end
if fair and waitms > 0 then
  if not redis.call('ZSCORE', queue, me) then
    redis.call('ZADD', queue, redis.call('HINCRBY', dl, '#', 1), me)
  end
  redis.call('HSET', dl, me, now + waitms)
  redis.call('PEXPIRE', queue, waitms * 2)
  redis.call('PEXPIRE', dl, waitms * 2)
end
return {0, hint, foreign}
";

/// ARGV: kind, token, fair (1|0), channel, fence floor (0: none), revoke ms (0: none). Returns 1
/// if the token held the lock, else 0. Wakes the head waiter (or every waiter, when readers or
/// permits may go). With a revoke time, a token that holds nothing is remembered as revoked for
/// that long, so its acquire, if it is still on its way, does not grant.
const RELEASE: &str = r"
local lock, set, fence, queue, revoked = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6]
local kind, permits = weight(ARGV[1])
local id, fair, channel, floor = ARGV[2], ARGV[3] == '1', ARGV[4], tonumber(ARGV[5])
local revoke = tonumber(ARGV[6])
local released
if kind == 'w' then
  released = redis.call('GET', lock) == id
  if released then redis.call('DEL', lock) end
else
  released = remove(set, id, permits) > 0
end
if not released then
  if revoke > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZREMRANGEBYSCORE', revoked, '-inf', now)
    redis.call('ZADD', revoked, now + revoke, id)
    if redis.call('PTTL', revoked) < revoke then redis.call('PEXPIRE', revoked, revoke) end
  end
  return 0
end
if floor > 0 then raise(fence, floor) end
if fair then
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  if head then
    if string.sub(head, 1, 1) == 'r' then head = '*' end
    redis.call('PUBLISH', channel, head)
  end
elseif revoke == 0 then
  -- RedLock waiters all wake on a release; not on the cleanup of a failed attempt, which would
  -- wake them into another round of split votes.
  redis.call('PUBLISH', channel, '*')
end
return 1
";

/// ARGV: kind, token, channel. A waiter that gives up leaves the queue; if it was at the head,
/// the next waiter is woken.
const LEAVE: &str = r"
local queue, dl = KEYS[4], KEYS[5]
local me = ARGV[1] .. ARGV[2]
local head = redis.call('ZRANGE', queue, 0, 0)[1]
if redis.call('ZREM', queue, me) == 0 then return 0 end
redis.call('HDEL', dl, me)
if head == me and redis.call('ZCARD', queue) > 0 then redis.call('PUBLISH', ARGV[3], '*') end
return 1
";

/// KEYS: pairs (main or set key, fence key). ARGV: quads (kind, token, lease ms, fence floor).
/// Returns one 1 (extended) or 0 (no longer ours) per pair. The fencing counter is raised to
/// the floor either way: a server restarted empty must not hand out a token below one a live
/// client holds.
const RENEW: &str = r"
local out = {}
for i = 1, #KEYS / 2 do
  local key, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, permits = weight(ARGV[4 * i - 3])
  local id = ARGV[4 * i - 2]
  local lease, floor = tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i])
  local ok = 0
  if kind == 'w' then
    local got, v = pcall(redis.call, 'GET', key)
    if got and v == id then redis.call('PEXPIRE', key, lease) ok = 1 end
  else
    local got, s = pcall(redis.call, 'ZSCORE', key, id)
    if got and s and tonumber(s) > now then
      for _, m in ipairs(members(id, permits)) do redis.call('ZADD', key, 'XX', now + lease, m) end
      if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
      ok = 1
    elseif got and s then
      remove(key, id, permits)
    end
  end
  if floor > 0 then raise(fence, floor) end
  out[i] = ok
end
return out
";

/// KEYS: fencing counters. ARGV: one floor each. Raises every counter below its floor to it
/// (after a reconnect to a server that may have restarted empty).
const FLOOR: &str = r"
for i = 1, #KEYS do raise(KEYS[i], tonumber(ARGV[i])) end
return #KEYS
";

/// ARGV: kind. Returns `{holders, longest remaining lease ms (-1: none), last fence}`.
const INSPECT: &str = r"
local lock, set, fence = KEYS[1], KEYS[2], KEYS[3]
redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
local holders, left = redis.call('ZCARD', set), -1
if holders > 0 then left = tonumber(redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')[2]) - now end
if ARGV[1] ~= 's' then
  local p = redis.call('PTTL', lock)
  if p ~= -2 then
    holders = holders + 1
    if p > left then left = p end
  end
end
return {holders, left, tonumber(redis.call('GET', fence) or '0')}
";

/// KEYS: a fencing counter, then every key whose existence shows its name in use (holder,
/// readers or permits, queued waiters, revoked attempts). Deletes the counter only when none exists,
/// atomically with that check. Returns 1 if it deleted it.
const CLEAN: &str = r"
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
return redis.call('DEL', KEYS[1])
";

/// The scripts, hashed once.
#[derive(Debug)]
pub struct Scripts {
    pub acquire: Script,
    pub release: Script,
    pub leave: Script,
    pub renew: Script,
    pub inspect: Script,
    pub floor: Script,
    pub clean: Script,
}

impl Scripts {
    pub fn get() -> &'static Scripts {
        static S: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
        S.get_or_init(|| {
            let with_clock = |body: &str| -> &'static str {
                Box::leak(format!("{PRELUDE}{body}").into_boxed_str())
            };
            let with_raise = |body: &str| -> &'static str {
                Box::leak(format!("{RAISE}{body}").into_boxed_str())
            };
            let with_permits = |body: &str| -> &'static str {
                Box::leak(format!("{PERMITS}{body}").into_boxed_str())
            };
            let own = Box::leak(format!("local OWN = '{OWN}'\n{ACQUIRE}").into_boxed_str());
            Scripts {
                acquire: Script::new(with_clock(with_permits(own))),
                release: Script::new(with_raise(with_permits(RELEASE))),
                leave: Script::new(LEAVE),
                renew: Script::new(with_clock(with_raise(with_permits(RENEW)))),
                inspect: Script::new(with_clock(INSPECT)),
                floor: Script::new(with_raise(FLOOR)),
                clean: Script::new(CLEAN),
            }
        })
    }
}
