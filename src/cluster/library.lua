#!lua name=skiff
-- skiff's cluster state, loaded by every node with FUNCTION LOAD REPLACE on connect.
-- Each function runs atomically: uniqueness and the room's order cannot race.
-- ARGV[1] is the key prefix. Every event goes out on PREFIX..'room' as
-- "KIND SEQ ...", SEQ from one counter, so a node can tell which events a snapshot
-- already holds.

local function publish(p, kind, rest)
  local seq = redis.call('INCR', p .. 'seq')
  redis.call('PUBLISH', p .. 'room', kind .. ' ' .. seq .. ' ' .. rest)
  return seq
end

-- How many of the user's sockets `node` holds ('pdev:' hash; a node of 'pnodes:'
-- without a count there holds one: it joined before counts were kept). A node's
-- count is its own: every node adds up the others' from the events N (a node's
-- new count), J (one, on the joining node) and L (none left anywhere), and the
-- sync's snapshot.
local function held_on(p, lower, node)
  return tonumber(redis.call('HGET', p .. 'pdev:' .. lower, node) or '1')
end

-- The nodes holding the user, sorted, each with its count.
local function holders(p, lower)
  local nodes = redis.call('SMEMBERS', p .. 'pnodes:' .. lower)
  table.sort(nodes)
  local out = {}
  for _, n in ipairs(nodes) do
    table.insert(out, { n, held_on(p, lower, n) })
  end
  return out
end

-- The user's sockets on every node.
local function devices(p, lower)
  local total = 0
  for _, h in ipairs(holders(p, lower)) do
    total = total + h[2]
  end
  return total
end

local function set_devices(p, lower, name, node, n)
  redis.call('HSET', p .. 'pdev:' .. lower, node, n)
  publish(p, 'N', node .. ' ' .. name .. ' ' .. n)
end

-- A user's last WebSocket on `node` is gone. The user stays online while a device
-- of theirs is open on another node ('pnodes:' set); the last one out leaves:
-- presence, the node's set and the online order lose it, and everyone hears it.
-- Only a node holding the user may end it (a late leave must not end a newer
-- socket elsewhere).
local function leave(p, lower, name, node)
  local nodes = p .. 'pnodes:' .. lower
  local holder = redis.call('HGET', p .. 'presence', lower)
  if redis.call('SREM', nodes, node) == 0 and holder ~= node then
    return 0
  end
  redis.call('SREM', p .. 'nodeusers:' .. node, lower)
  if redis.call('HGET', p .. 'pv1', lower) == node then
    redis.call('HDEL', p .. 'pv1', lower)
  end
  redis.call('HDEL', p .. 'pdev:' .. lower, node)
  local other = redis.call('SRANDMEMBER', nodes)
  if other then
    if holder == node then
      redis.call('HSET', p .. 'presence', lower, other)
    end
    publish(p, 'N', node .. ' ' .. name .. ' 0')
    return 1
  end
  redis.call('DEL', p .. 'pdev:' .. lower)
  redis.call('HDEL', p .. 'presence', lower)
  redis.call('ZREM', p .. 'online', name)
  publish(p, 'L', node .. ' ' .. name)
  return 1
end

-- -> seq of the join event; -1: joined beside the user's v2 devices on other nodes
-- (no join event: they are online already; N tells the node's new count); 0:
-- refused (a plain /ws socket is the only socket of its user, cluster-wide; 'pv1'
-- names the node holding one); -2: refused, the user holds `cap` sockets already
-- (every node's counted; no cap given: none checked).
local function join(p, lower, name, node, token, v2, cap)
  local holder = redis.call('HGET', p .. 'presence', lower)
  if holder then
    if v2 ~= '1' or redis.call('HEXISTS', p .. 'pv1', lower) == 1 then
      return 0
    end
    if cap and devices(p, lower) >= cap then
      return -2
    end
    local here = 0
    if redis.call('SISMEMBER', p .. 'pnodes:' .. lower, node) == 1 then
      here = held_on(p, lower, node)
    end
    redis.call('SADD', p .. 'pnodes:' .. lower, holder, node)
    redis.call('SADD', p .. 'nodeusers:' .. node, lower)
    set_devices(p, lower, name, node, here + 1)
    return -1
  end
  redis.call('HSET', p .. 'presence', lower, node)
  redis.call('SADD', p .. 'pnodes:' .. lower, node)
  redis.call('DEL', p .. 'pdev:' .. lower)
  redis.call('HSET', p .. 'pdev:' .. lower, node, 1)
  if v2 ~= '1' then
    redis.call('HSET', p .. 'pv1', lower, node)
  end
  redis.call('SADD', p .. 'nodeusers:' .. node, lower)
  local seq = publish(p, 'J', node .. ' ' .. token .. ' ' .. name)
  redis.call('ZADD', p .. 'online', seq, name)
  return seq
end

-- {replicas attached, replicas online} from INFO: a node makes a registration's 201
-- wait for a replica (WAIT) when the primary has one, and answers 503 at once when
-- the replicas it has are all still in their first sync (a WAIT could only time out).
local function replicas()
  local info = redis.call('INFO', 'replication')
  local attached = tonumber(string.match(info, 'connected_slaves:(%d+)') or '0')
  local _, online = string.gsub(info, 'state=online', '')
  return { attached, online }
end

-- A session ends: a tombstone outlives it as long as the session would have, so a
-- node that was away when it ended (and so still holds its socket) learns it ended
-- instead of re-asserting it (see skiff_reassert).
local function end_session(p, sess, code)
  local k = p .. 'sess:' .. sess
  local left = redis.call('PTTL', k)
  if left > 0 then
    redis.call('SET', p .. 'ended:' .. sess, code, 'PX', left)
  end
  return redis.call('DEL', k)
end

local function now_ms()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end

-- (p, lower, name, keyhash) -> 1, or 0 if the name is taken (ignoring case)
redis.register_function('skiff_register', function(_, a)
  if redis.call('HSETNX', a[1] .. 'users', a[2], a[3]) == 0 then
    return 0
  end
  redis.call('HSET', a[1] .. 'keys', a[4], a[3])
  redis.call('HSET', a[1] .. 'keyof', a[2], a[4])
  redis.call('HSET', a[1] .. 'created', a[2], now_ms())
  return 1
end)

-- (p, keyhash, sesshash, ttl_ms, cap) -> the user's name, or nil for an unknown key.
-- Past `cap` live sessions the user's oldest are ended (event E, code 1008).
redis.register_function('skiff_login', function(_, a)
  local p, keyhash, sess, ttl, cap = a[1], a[2], a[3], a[4], tonumber(a[5])
  local name = redis.call('HGET', p .. 'keys', keyhash)
  if not name then
    return false
  end
  local ban = redis.call('HGET', p .. 'banned', string.lower(name))
  if ban then
    local until_ms = redis.call('HGET', p .. 'banuntil', string.lower(name))
    if not until_ms or tonumber(until_ms) > tonumber(now_ms()) then
      local since, why = string.match(ban, '^(%S*) ?(.*)$')
      return { 'banned', since, until_ms or '', why }
    end
    -- A timed ban that has run out ends here, at the first login after it.
    redis.call('HDEL', p .. 'banned', string.lower(name))
    redis.call('HDEL', p .. 'banuntil', string.lower(name))
    publish(p, 'U', name)
  end
  local list = p .. 'usess:' .. string.lower(name)
  local t = redis.call('TIME')
  redis.call('SET', p .. 'sess:' .. sess, name, 'PX', ttl)
  redis.call('ZADD', list, tonumber(t[1]) * 1000000 + tonumber(t[2]), sess)
  if redis.call('ZCARD', list) > cap then
    for _, h in ipairs(redis.call('ZRANGE', list, 0, -1)) do
      if redis.call('EXISTS', p .. 'sess:' .. h) == 0 then
        redis.call('ZREM', list, h)
      end
    end
    while redis.call('ZCARD', list) > cap do
      local oldest = redis.call('ZPOPMIN', list)[1]
      end_session(p, oldest, '1008')
      publish(p, 'E', '1008 ' .. oldest)
    end
  end
  redis.call('PEXPIRE', list, ttl)
  return name
end)

-- (p, sesshash) -> {name, ms left} or nil
redis.register_function { function_name = 'skiff_session', flags = { 'no-writes' }, callback = function(_, a)
  local k = a[1] .. 'sess:' .. a[2]
  local name = redis.call('GET', k)
  if not name then
    return false
  end
  return { name, redis.call('PTTL', k) }
end }

-- (p, sesshash, ttl_ms): activity; the session lives ttl_ms from now.
redis.register_function('skiff_renew', function(_, a)
  return redis.call('PEXPIRE', a[1] .. 'sess:' .. a[2], a[3])
end)

-- (p, sesshash) -> 1 if it was live. Its sockets close with 1000 (E), and so does
-- every other socket of its user, whatever session opened it, on every node (O):
-- a logout on one device logs every device out, as on a single node.
redis.register_function('skiff_logout', function(_, a)
  local p, sess = a[1], a[2]
  local k = p .. 'sess:' .. sess
  local name = redis.call('GET', k)
  if not name then
    return 0
  end
  end_session(p, sess, '1000')
  redis.call('ZREM', p .. 'usess:' .. string.lower(name), sess)
  publish(p, 'E', '1000 ' .. sess)
  publish(p, 'O', name)
  return 1
end)

-- (p, lower, name, node, token, v2[, cap]) -> 0 if the user may not join (online
-- already, and this or that socket is not v2), -2 if the user holds `cap` sockets
-- across the cluster already, else {seq of the join event, or -1 when the user is
-- online already through another node's device (no join event), when the user was
-- registered (ms; false if not recorded)}
redis.register_function('skiff_join', function(_, a)
  local seq = join(a[1], a[2], a[3], a[4], a[5], a[6], tonumber(a[7]))
  if seq == 0 or seq == -2 then
    return seq
  end
  return { seq, redis.call('HGET', a[1] .. 'created', a[2]) }
end)

-- (p, lower, name, node, delta) -> the user's sockets on every node after the change.
-- A node that holds the user already opened (delta > 0) or closed (< 0) sockets of
-- theirs beside the one that joined it (its last one goes through skiff_leave):
-- its count moves, never below one, and every node hears it (N). A node that does
-- not hold the user (reaped meanwhile) changes nothing: its next sync sets it right.
-- A count past the cap is the node's to correct: two nodes each let in a device
-- in the same moment, and the one whose count came second closes its new one.
redis.register_function('skiff_devices', function(_, a)
  local p, lower, node = a[1], a[2], a[4]
  if redis.call('SISMEMBER', p .. 'pnodes:' .. lower, node) == 1 then
    set_devices(p, lower, a[3], node, math.max(held_on(p, lower, node) + tonumber(a[5]), 1))
  end
  return devices(p, lower)
end)

-- (p, lower, name, node) -> 1 if the user was online on that node
redis.register_function('skiff_leave', function(_, a)
  return leave(a[1], a[2], a[3], a[4])
end)

-- (p, node, token, author, text, keep) -> the message's id. Kept in the stream
-- PREFIX..'history' under the id N-0, the newest `keep` of them.
redis.register_function('skiff_message', function(_, a)
  local p, node, token, author, text, keep = a[1], a[2], a[3], a[4], a[5], tonumber(a[6])
  local id = redis.call('INCR', p .. 'msgid')
  local t = redis.call('TIME')
  local ts = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  if keep > 0 then
    redis.call('XADD', p .. 'history', 'MAXLEN', keep, id .. '-0', 'ts', ts, 'author', author, 'message', text)
  end
  publish(p, 'M', id .. ' ' .. ts .. ' ' .. node .. ' ' .. token .. ' ' .. author .. ' ' .. text)
  return id
end)

-- (p, node, ttl_ms) -> {replicas attached, online}: this node is alive for ttl_ms more.
redis.register_function('skiff_heartbeat', function(_, a)
  redis.call('SET', a[1] .. 'node:' .. a[2], '1', 'PX', a[3])
  redis.call('SADD', a[1] .. 'nodes', a[2])
  return replicas()
end)

-- (p, sesshash, lower, name, ttl_ms, created) -> what became of the session of a
-- socket a node holds, asked after every sync: 'live'; 'ended CODE' (it ended while
-- the node was away); 'deleted' or 'banned' (the user is gone: a user registered
-- at another time than `created`, as skiff_join said it, is another user under
-- the same name, after a Redis that lost the first); or 'restored': this Redis never
-- had it or lost it (a failover to a replica that had not received it, a restart
-- from an older snapshot), so it is written again for ttl_ms, and nobody online is
-- logged out by the loss.
redis.register_function('skiff_reassert', function(_, a)
  local p, sess, lower, name = a[1], a[2], a[3], a[4]
  if not redis.call('HGET', p .. 'users', lower) then
    return 'deleted'
  end
  if a[6] ~= '' and redis.call('HGET', p .. 'created', lower) ~= a[6] then
    return 'deleted'
  end
  if redis.call('HEXISTS', p .. 'banned', lower) == 1 then
    local until_ms = redis.call('HGET', p .. 'banuntil', lower)
    if not until_ms or tonumber(until_ms) > tonumber(now_ms()) then
      return 'banned'
    end
  end
  local k = p .. 'sess:' .. sess
  if redis.call('EXISTS', k) == 1 then
    return 'live'
  end
  local code = redis.call('GET', p .. 'ended:' .. sess)
  if code then
    return 'ended ' .. code
  end
  local list = p .. 'usess:' .. lower
  local t = redis.call('TIME')
  redis.call('SET', k, name, 'PX', a[5])
  redis.call('ZADD', list, tonumber(t[1]) * 1000000 + tonumber(t[2]), sess)
  if redis.call('PTTL', list) < tonumber(a[5]) then
    redis.call('PEXPIRE', list, a[5])
  end
  return 'restored'
end)

-- (p) -> users removed: every user of a node whose heartbeat ran out leaves.
redis.register_function('skiff_reap', function(_, a)
  local p = a[1]
  local gone = 0
  for _, node in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do
    if redis.call('EXISTS', p .. 'node:' .. node) == 0 then
      for _, lower in ipairs(redis.call('SMEMBERS', p .. 'nodeusers:' .. node)) do
        local name = redis.call('HGET', p .. 'users', lower) or lower
        gone = gone + leave(p, lower, name, node)
      end
      redis.call('DEL', p .. 'nodeusers:' .. node)
      redis.call('SREM', p .. 'nodes', node)
    end
  end
  return gone
end)

-- (p, node): the node is stopping: its users leave now, not when its heartbeat
-- runs out, so they can reconnect to another node at once.
redis.register_function('skiff_stop', function(_, a)
  local p, node = a[1], a[2]
  for _, lower in ipairs(redis.call('SMEMBERS', p .. 'nodeusers:' .. node)) do
    leave(p, lower, redis.call('HGET', p .. 'users', lower) or lower, node)
  end
  redis.call('DEL', p .. 'nodeusers:' .. node, p .. 'node:' .. node)
  redis.call('SREM', p .. 'nodes', node)
  return 1
end)

-- (p, node, ttl_ms, epoch, keep, seen_epoch, seen_id, lower1, name1, token1, ...):
-- the node (re)connected and its open WebSockets are exactly the users given.
-- Presence is made so (users it no longer has leave; users Redis lost join again)
-- and the node gets a snapshot: {seq, epoch, last id, online names in join order,
-- newest `keep` messages newest first, lowercased names another node holds now,
-- {replicas attached, online}, {lower, node, sockets, ...} for every online user}.
-- `epoch` is a fresh candidate; `seen_epoch`/`seen_id` the history the node had.
redis.register_function('skiff_sync', function(_, a)
  local p, node, ttl, keep = a[1], a[2], a[3], tonumber(a[5])
  local seen_epoch, seen_id = a[6], tonumber(a[7])
  redis.call('SET', p .. 'node:' .. node, '1', 'PX', ttl)
  redis.call('SADD', p .. 'nodes', node)
  redis.call('SET', p .. 'epoch', a[4], 'NX')
  -- Redis came back from an older snapshot (RDB, an AOF without fsync): this node
  -- has seen ids the counter has not reached, so the next ids would name other
  -- messages. The history is declared new, here, once: the first node to sync
  -- after the rollback moves the epoch, and the others see it already moved. The
  -- counter goes past every id seen, so ids never repeat even across epochs.
  -- A Redis that has no history at all (a replica promoted before its first sync)
  -- got the fresh epoch just now; its counter goes past what the node saw as well.
  local msgid = tonumber(redis.call('GET', p .. 'msgid') or '0')
  if msgid < seen_id then
    if seen_epoch == redis.call('GET', p .. 'epoch') then
      redis.call('SET', p .. 'epoch', a[4])
    end
    redis.call('SET', p .. 'msgid', seen_id)
  end
  local mine = {}
  for i = 8, #a, 3 do
    mine[a[i]] = true
  end
  for _, lower in ipairs(redis.call('SMEMBERS', p .. 'nodeusers:' .. node)) do
    if not mine[lower] then
      leave(p, lower, redis.call('HGET', p .. 'users', lower) or lower, node)
    end
  end
  local taken = {}
  local count = {}
  for i = 8, #a, 3 do
    local holder = redis.call('HGET', p .. 'presence', a[i])
    if not holder then
      join(p, a[i], a[i + 1], node, a[i + 2], '1')
    elseif holder ~= node and redis.call('SISMEMBER', p .. 'pnodes:' .. a[i], node) == 0 then
      table.insert(taken, a[i])
    end
    count[a[i]] = (count[a[i]] or 0) + 1
  end
  -- A user comes once per socket: each node's count is made what it holds.
  for i = 8, #a, 3 do
    local lower, n = a[i], count[a[i]]
    if n and redis.call('SISMEMBER', p .. 'pnodes:' .. lower, node) == 1 and held_on(p, lower, node) ~= n then
      set_devices(p, lower, a[i + 1], node, n)
    end
    count[lower] = nil
  end
  -- Who holds how many sockets of each online user: {lower, node, count, ...}.
  local held = {}
  for _, name in ipairs(redis.call('ZRANGE', p .. 'online', 0, -1)) do
    local lower = string.lower(name)
    for _, h in ipairs(holders(p, lower)) do
      table.insert(held, lower)
      table.insert(held, h[1])
      table.insert(held, h[2])
    end
  end
  local history = {}
  if keep > 0 then
    history = redis.call('XREVRANGE', p .. 'history', '+', '-', 'COUNT', keep)
  end
  return {
    tonumber(redis.call('GET', p .. 'seq') or '0'),
    redis.call('GET', p .. 'epoch'),
    tonumber(redis.call('GET', p .. 'msgid') or '0'),
    redis.call('ZRANGE', p .. 'online', 0, -1),
    history,
    taken,
    replicas(),
    held,
  }
end)

-- skiff ctl: the operator's commands, each as atomic as the rest. Sockets close
-- through the room's events: E (a session ended, 1008) on the node holding the
-- socket, K (a kick, 1000) on the node named, D (a message left the history) on all.

-- Ends every session of a user; returns how many were live.
-- `code`: 1008, or 4001 (key reset) / 4002 (user deleted), which nodes close as
-- 1008 with those words (older nodes: as any 1008).
local function end_sessions(p, lower, code)
  local list = p .. 'usess:' .. lower
  local ended = 0
  for _, h in ipairs(redis.call('ZRANGE', list, 0, -1)) do
    if end_session(p, h, code or '1008') == 1 then
      publish(p, 'E', (code or '1008') .. ' ' .. h)
      ended = ended + 1
    end
  end
  redis.call('DEL', list)
  return ended
end

-- The user's key hash. Users registered before 'keyof' existed are found by a scan
-- of 'keys', once: a reset or a deletion then writes 'keyof' or removes the user.
local function key_of(p, lower, name)
  local k = redis.call('HGET', p .. 'keyof', lower)
  if k then
    return k
  end
  local cursor = '0'
  repeat
    local r = redis.call('HSCAN', p .. 'keys', cursor, 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2], 2 do
      if r[2][i + 1] == name then
        return r[2][i]
      end
    end
  until cursor == '0'
  return false
end

local function live_sessions(p, lower)
  local n = 0
  for _, h in ipairs(redis.call('ZRANGE', p .. 'usess:' .. lower, 0, -1)) do
    n = n + redis.call('EXISTS', p .. 'sess:' .. h)
  end
  return n
end

-- (p) -> {users, online, banned, history}
redis.register_function { function_name = 'skiff_status', flags = { 'no-writes' }, callback = function(_, a)
  local p = a[1]
  return { redis.call('HLEN', p .. 'users'), redis.call('ZCARD', p .. 'online'), redis.call('HLEN', p .. 'banned'),
    redis.call('XLEN', p .. 'history') }
end }

-- (p, after, limit, online_only) -> {{name, registered_ms, online, sessions, banned,
-- 'since_ms reason' or '', until_ms or ''}, ...}
-- by lowercased name after `after`. Sorting every name costs O(n log n) per page: an
-- operator's command, not a per-message path.
redis.register_function { function_name = 'skiff_users', flags = { 'no-writes' }, callback = function(_, a)
  local p, after, limit, online_only = a[1], a[2], tonumber(a[3]), a[4] == '1'
  local lowers = {}
  if online_only then
    for _, name in ipairs(redis.call('ZRANGE', p .. 'online', 0, -1)) do
      table.insert(lowers, string.lower(name))
    end
  else
    lowers = redis.call('HKEYS', p .. 'users')
  end
  table.sort(lowers)
  local out = {}
  for _, lower in ipairs(lowers) do
    if #out >= limit then
      break
    end
    local name = redis.call('HGET', p .. 'users', lower)
    if lower > after and name then
      table.insert(out, { name, redis.call('HGET', p .. 'created', lower), redis.call('HEXISTS', p .. 'presence', lower),
        live_sessions(p, lower), redis.call('HEXISTS', p .. 'banned', lower),
        redis.call('HGET', p .. 'banned', lower) or '', redis.call('HGET', p .. 'banuntil', lower) or '' })
    end
  end
  return out
end }

-- (p, lower) -> 1 (the K event went out), 0 if the user is not online, -1 if unknown
redis.register_function('skiff_kick', function(_, a)
  local p, lower = a[1], a[2]
  local name = redis.call('HGET', p .. 'users', lower)
  if not name then
    return -1
  end
  local node = redis.call('HGET', p .. 'presence', lower)
  if not node then
    return 0
  end
  -- Every node holding a device of the user closes it.
  local nodes = redis.call('SMEMBERS', p .. 'pnodes:' .. lower)
  if #nodes == 0 then
    nodes = { node }
  end
  for _, n in ipairs(nodes) do
    publish(p, 'K', n .. ' ' .. name)
  end
  return 1
end)

-- (p, lower, reason, at_ms[, until_ms]) -> {name, sessions ended}, or nil for an
-- unknown user. The name stays taken; a login answers banned until skiff_unban or
-- until_ms. Event B tells every node first, so the sessions close with the ban's words.
redis.register_function('skiff_ban', function(_, a)
  local p, lower = a[1], a[2]
  local name = redis.call('HGET', p .. 'users', lower)
  if not name then
    return false
  end
  redis.call('HSET', p .. 'banned', lower, a[4] .. ' ' .. a[3])
  local until_ms = a[5] or ''
  if until_ms ~= '' then
    redis.call('HSET', p .. 'banuntil', lower, until_ms)
  else
    redis.call('HDEL', p .. 'banuntil', lower)
  end
  local note = name .. ' ' .. a[4] .. ' ' .. (until_ms ~= '' and until_ms or '-')
  if a[3] ~= '' then
    note = note .. ' ' .. a[3]
  end
  publish(p, 'B', note)
  return { name, end_sessions(p, lower) }
end)

-- (p, lower) -> {name, 1 if it was banned}, or nil for an unknown user
redis.register_function('skiff_unban', function(_, a)
  local p, lower = a[1], a[2]
  local name = redis.call('HGET', p .. 'users', lower)
  if not name then
    return false
  end
  redis.call('HDEL', p .. 'banuntil', lower)
  local was = redis.call('HDEL', p .. 'banned', lower)
  if was == 1 then
    publish(p, 'U', name)
  end
  return { name, was }
end)

-- (p, lower, new keyhash) -> {name, sessions ended}, or nil for an unknown user
redis.register_function('skiff_reset_key', function(_, a)
  local p, lower, new = a[1], a[2], a[3]
  local name = redis.call('HGET', p .. 'users', lower)
  if not name then
    return false
  end
  local old = key_of(p, lower, name)
  if old then
    redis.call('HDEL', p .. 'keys', old)
  end
  redis.call('HSET', p .. 'keys', new, name)
  redis.call('HSET', p .. 'keyof', lower, new)
  return { name, end_sessions(p, lower, '4001') }
end)

-- (p, lower, with_messages) -> {name, sessions ended, messages deleted}, or nil for
-- an unknown user. The name is free again at once.
redis.register_function('skiff_delete_user', function(_, a)
  local p, lower = a[1], a[2]
  local name = redis.call('HGET', p .. 'users', lower)
  if not name then
    return false
  end
  local old = key_of(p, lower, name)
  if old then
    redis.call('HDEL', p .. 'keys', old)
  end
  for _, h in ipairs({ 'users', 'keyof', 'banned', 'banuntil', 'created' }) do
    redis.call('HDEL', p .. h, lower)
  end
  local ended = end_sessions(p, lower, '4002')
  local deleted = 0
  if a[3] == '1' then
    for _, e in ipairs(redis.call('XRANGE', p .. 'history', '-', '+')) do
      local f = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'author' and f[i + 1] == name then
          redis.call('XDEL', p .. 'history', e[1])
          publish(p, 'D', string.match(e[1], '^(%d+)'))
          deleted = deleted + 1
        end
      end
    end
  end
  return { name, ended, deleted }
end)

-- (p, id) -> 1 if message id was kept (it is gone now, event D), else 0
redis.register_function('skiff_delete_message', function(_, a)
  local p, id = a[1], a[2]
  if redis.call('XDEL', p .. 'history', id .. '-0') == 0 then
    return 0
  end
  publish(p, 'D', id)
  return 1
end)
