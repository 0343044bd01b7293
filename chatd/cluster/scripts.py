"""What Redis holds for a cluster (its keys) and the Lua scripts that
change it atomically.

Per room, under its key ``<key>`` (the name lower-cased, ``#lobby`` too):

- ``chatd:stream:<key>``: the messages, a stream whose ids only
  :data:`PUBLISH` gives (``<n>-1``, ``n`` from ``chatd:seq:<key>``);
  capped with ``MAXLEN ~``, it is also the room's history.
- ``chatd:presence:<key>``: a short stream of who came and went, and of
  the room's events (``topic``, ...).
- ``chatd:members:<key>``: who is in it, every node's, a sorted set of
  ``<node>|<Name>`` by ``chatd:joinseq``.

Rooms' records: ``chatd:rooms`` (a hash, room key -> the record's JSON),
``chatd:roomrev`` (room key -> the id of its last change in
``chatd:roomlog``, a stream every node reads to keep its copy fresh).

Direct messages: one stream every node reads, ``chatd:dm`` (stream ids
``<n>-1`` from ``chatd:dmseq``); a message's id comes from its
conversation's ``chatd:seq:@<a> <b>`` and travels as a field.

For the whole cluster: ``chatd:name:<lower>`` (the node and the name as
given, ``<node>|<Name>``, set with ``NX`` and a short expiry that the
owning node's heartbeat refreshes), ``chatd:users`` (a sorted set of
lower-cased names by login sequence, from ``chatd:loginseq``).  Per node:
``chatd:node:<node>`` (alive while its heartbeat refreshes it), its
entries in ``chatd:nodes``, ``chatd:nodemembers:<node>`` (the room
memberships to remove when it dies: ``<room key> <node>|<Name>``) and
``chatd:wake:<node>`` (a tiny stream that ends its blocking read early).

Accounts (with ``--accounts``): ``chatd:accounts`` (lower-cased name ->
the record's JSON, a PHC hash and no password), ``chatd:accountnames``
(-> the name as registered), ``chatd:restrictions`` (bans and mutes),
``chatd:accountlog`` (the stream every node follows: new accounts, bans
and mutes set or lifted), ``chatd:memberships:<account>`` (its rooms by
join order) and ``chatd:roomaccounts:<room>``, the DMs kept per owner
(``chatd:dmkept:<owner>:<conversation>``, ``chatd:dmconvs:<owner>``) and
its delivery marks (``chatd:dmmarks:<owner>``), ``chatd:sessions:<lower>``
(an account's sessions per node: its name key then holds ``*|<Name>``),
and the throttle's windows ``chatd:throttle:<kind>:<who>``.
"""

from __future__ import annotations

#: The sorted set of names by login sequence, and that sequence.
USERS_KEY = "chatd:users"
LOGIN_SEQ_KEY = "chatd:loginseq"


def stream_key(room: str) -> str:
    """The stream of ``room``'s messages (its history)."""
    return f"chatd:stream:{room}"


def seq_key(room: str) -> str:
    """The counter that gives ``room``'s message ids."""
    return f"chatd:seq:{room}"


def presence_key(room: str) -> str:
    """The stream of who came and went in ``room``, and of its events."""
    return f"chatd:presence:{room}"


def members_key(room: str) -> str:
    """The sorted set of ``room``'s members (``<node>|<Name>``) by join sequence."""
    return f"chatd:members:{room}"


def node_key(node: str) -> str:
    """The key that exists while ``node`` is alive (its heartbeat)."""
    return f"chatd:node:{node}"


def node_members_key(node: str) -> str:
    """The set of ``node``'s room memberships (``<room key> <node>|<Name>``)."""
    return f"chatd:nodemembers:{node}"


def wake_key(node: str) -> str:
    """The stream whose entries end ``node``'s blocking read early."""
    return f"chatd:wake:{node}"


#: The stream of every direct message, and the sequence of its stream ids.
DM_STREAM = "chatd:dm"
DM_SEQ = "chatd:dmseq"
#: Rooms' records, their revisions, and the stream of their changes.
ROOMS_KEY = "chatd:rooms"
ROOM_REVS_KEY = "chatd:roomrev"
ROOM_LOG = "chatd:roomlog"
#: The sequence that orders members as they join (any room).
JOIN_SEQ_KEY = "chatd:joinseq"
#: The nodes that have (or had) members in rooms.
NODES_KEY = "chatd:nodes"


def name_key(lower: str) -> str:
    """The key that says which node holds a (lower-cased) name."""
    return f"chatd:name:{lower}"


# Shared by the scripts below (KEYS[1] the sequence, KEYS[2] the stream):
# entries beyond the sequence were not added by PUBLISH.  One with an id
# of PUBLISH's form (<n>-1, n of at most 15 digits) may have been
# delivered by readers already: the sequence moves past it.  Any other
# (a clock id, say) is deleted: no reader moves past it, and the
# stream's last id is set back to the sequence, so the next XADD fits.
REPAIR_FUNCTIONS = """
local function reset_last_id(stream, seq)
  if redis.call('EXISTS', stream) == 0 then return end
  local id = seq .. '-1'
  local done = redis.pcall('XSETID', stream, id)
  if type(done) == 'table' and done.err then
    redis.pcall('XSETID', stream, id, 'ENTRIESADDED', redis.call('XLEN', stream), 'MAXDELETEDID', id)
  end
end

local function repair(seq_key, stream, force)
  local seq = redis.call('GET', seq_key)
  if not seq or not string.match(seq, '^%d+$') or #seq > 15 then
    seq = '0'
    redis.call('SET', seq_key, seq)
  end
  local deleted = false
  for _ = 1, 1000 do
    local above = redis.call('XREVRANGE', stream, '+', '(' .. seq .. '-1', 'COUNT', 1)
    if #above == 0 then break end
    local id = above[1][1]
    local n = string.match(id, '^([1-9]%d*)%-1$')
    if n and #n <= 15 then
      seq = n
      redis.call('SET', seq_key, n)
    else
      redis.call('XDEL', stream, id)
      deleted = true
    end
  end
  if deleted or force then reset_last_id(stream, seq) end
  return seq
end
"""

# A batch of messages: ARGV[1] is the stream cap, then five fields per
# message (sender, text, timestamp, node, token), in order.  An XADD
# refused because something not ours lies beyond the sequence repairs
# the stream and tries once more, with the same id unless the repair
# moved the sequence; a sequence that is not a number is repaired first.
PUBLISH = REPAIR_FUNCTIONS + """
local seq = redis.call('GET', KEYS[1])
if seq and not (string.match(seq, '^%d+$') and #seq <= 15) then repair(KEYS[1], KEYS[2], true) end
local ids = {}
for i = 2, #ARGV, 6 do
  local fields = {'sender', ARGV[i], 'text', ARGV[i + 1], 'ts', ARGV[i + 2], 'node', ARGV[i + 3], 'token', ARGV[i + 4]}
  if ARGV[i + 5] == '1' then
    fields[#fields + 1] = 'notice'
    fields[#fields + 1] = '1'
  end
  local id = redis.call('INCR', KEYS[1])
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', id), unpack(fields))
  if type(added) == 'table' and added.err then
    redis.call('SET', KEYS[1], string.format('%d', id - 1))
    repair(KEYS[1], KEYS[2], true)
    id = redis.call('INCR', KEYS[1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', id), unpack(fields))
  end
  ids[#ids + 1] = id
end
return ids
"""

# The repair alone: returns the sequence (a string), every entry at or
# below "<sequence>-1" is final.
REPAIR = REPAIR_FUNCTIONS + """
return repair(KEYS[1], KEYS[2], false)
"""

# KEYS: the name key, the login sequence, the users set; ARGV: the value
# (<node>|<Name>), the expiry (ms), the lower-cased name.  Returns the
# login sequence, or 0 if the name is held.
CLAIM_NAME = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[3])
return seq
"""

# Refresh our names; re-take any that expired while we were away (and put
# them back in the login order, which `names` may have pruned meanwhile);
# return those another node took meanwhile.
# KEYS: the users set, then one name key per name; ARGV: the expiry, then
# (value, lower-cased name, login sequence) for each name.
REFRESH_NAMES = """
local lost = {}
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 3
  local value = redis.call('GET', KEYS[i])
  if value == false or value == ARGV[base] then
    redis.call('SET', KEYS[i], ARGV[base], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], 'NX', ARGV[base + 2], ARGV[base + 1])
  else
    table.insert(lost, ARGV[base + 1])
  end
end
return lost
"""

# KEYS: the name key, the users set; ARGV: our value, the lower-cased name.
RELEASE_NAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# Direct messages, a batch: KEYS[1], KEYS[2] the DM stream's sequence and
# stream, then per message its conversation's sequence and the recipient's
# name key; ARGV[1] the stream cap, ARGV[2] and ARGV[3] the prefixes of the
# kept DMs' keys and of the owners' conversations, ARGV[4] how many DMs are
# kept per owner and conversation, then nine fields per message (sender,
# text, timestamp, node, token, conversation key, its owners: the sides
# that are accounts, lower-cased and space-separated, offline: the
# recipient's name if it is an account that may be offline, else "", and
# notice: "1" for an IRC NOTICE, else "").
# A recipient whose name nobody holds gets nothing (no id is taken)
# unless offline is given: then the message is kept for its owners and
# its entry says so.  The others' messages get the conversation's next id
# and carry the recipient's name as its holder logged in.  Each owner
# keeps the message (a JSON object, in a sorted set by id, the oldest
# dropped beyond the cap) and its conversation's newest id.  Returns two
# items per message: the id (0: refused) and the recipient's name.  The
# stream is repaired as PUBLISH repairs a room's.
DM_PUBLISH = REPAIR_FUNCTIONS + """
local seq = redis.call('GET', KEYS[1])
if seq and not (string.match(seq, '^%d+$') and #seq <= 15) then repair(KEYS[1], KEYS[2], true) end
local keep = tonumber(ARGV[4])
local out = {}
local count = (#ARGV - 4) / 9
for m = 0, count - 1 do
  local a = 5 + m * 9
  local holder = redis.call('GET', KEYS[4 + m * 2])
  local bar = holder and string.find(holder, '|', 1, true)
  local to = nil
  local offline = false
  if bar then
    to = string.sub(holder, bar + 1)
  elseif ARGV[a + 7] ~= '' then
    to = ARGV[a + 7]
    offline = true
  end
  if not to then
    out[#out + 1] = 0
    out[#out + 1] = ''
  else
    local id = redis.call('INCR', KEYS[3 + m * 2])
    local number = string.format('%d', id)
    local fields = {'conv', ARGV[a + 5], 'id', number, 'sender', ARGV[a], 'text', ARGV[a + 1],
                    'ts', ARGV[a + 2], 'to', to, 'node', ARGV[a + 3], 'token', ARGV[a + 4]}
    if offline then
      fields[#fields + 1] = 'offline'
      fields[#fields + 1] = '1'
    end
    local notice = ARGV[a + 8] == '1'
    if notice then
      fields[#fields + 1] = 'notice'
      fields[#fields + 1] = '1'
    end
    local n = redis.call('INCR', KEYS[1])
    local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', n), unpack(fields))
    if type(added) == 'table' and added.err then
      redis.call('SET', KEYS[1], string.format('%d', n - 1))
      repair(KEYS[1], KEYS[2], true)
      n = redis.call('INCR', KEYS[1])
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', n), unpack(fields))
    end
    if ARGV[a + 6] ~= '' then
      local kept = cjson.encode({id = number, sender = ARGV[a], to = to, text = ARGV[a + 1], ts = ARGV[a + 2],
                                 offline = offline, notice = notice})
      for owner in string.gmatch(ARGV[a + 6], '%S+') do
        local place = ARGV[2] .. owner .. ':' .. ARGV[a + 5]
        redis.call('ZADD', place, id, kept)
        local size = redis.call('ZCARD', place)
        if size > keep then redis.call('ZREMRANGEBYRANK', place, 0, size - keep - 1) end
        redis.call('HSET', ARGV[3] .. owner, ARGV[a + 5], number)
      end
    end
    out[#out + 1] = id
    out[#out + 1] = to
  end
end
return out
"""

# Rooms' records.  KEYS: the records hash, the revisions hash, the log.
# A change is written to all three at once; its log entry's id is the
# record's revision, so a node applies a change only if it is newer than
# what it holds.

# Every record and its revision, and where the log ends (read from there).
LOAD_ROOMS = """
local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local position = '0-0'
if #top > 0 then position = top[1][1] end
return {position, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

# ARGV: the room key, the new record's JSON, the log cap.  The first
# creation wins (any spelling of the key): returns {JSON, revision} of
# the record that exists now.
CREATE_ROOM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then return {current, redis.call('HGET', KEYS[2], ARGV[1]) or '0-0'} end
local rev = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'key', ARGV[1], 'record', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], rev)
return {ARGV[2], rev}
"""

# Compare and set.  ARGV: the room key, the revision the change was made
# from, the new JSON, the log cap.  Returns {1, JSON, revision} when
# written, {2, JSON, revision} of the newer record when another change
# came first (make the change again from it), {0} when there is no record.
UPDATE_ROOM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return {0} end
local rev = redis.call('HGET', KEYS[2], ARGV[1]) or '0-0'
if rev ~= ARGV[2] then return {2, current, rev} end
local new = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'key', ARGV[1], 'record', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], new)
return {1, ARGV[3], new}
"""

# A member enters a room.  KEYS: the join sequence, the room's members,
# the node's memberships, the nodes set; ARGV: the member
# (<node>|<Name>), the room key, the node.  Returns its join sequence
# (an entry already there keeps its place).
ENTER_ROOM = """
local seq = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not seq then
  seq = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], seq, ARGV[1])
end
redis.call('SADD', KEYS[3], ARGV[2] .. ' ' .. ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
return seq
"""

# A member leaves.  KEYS: the room's members, the node's memberships;
# ARGV: the member, the room key.
LEAVE_ROOM = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2] .. ' ' .. ARGV[1])
return 1
"""

# KEYS: rooms' member sets.  Returns how many entries each has.
COUNT_MEMBERS = """
local counts = {}
for i = 1, #KEYS do counts[i] = redis.call('ZCARD', KEYS[i]) end
return counts
"""

# A node's heartbeat.  KEYS: its key, the nodes set; ARGV: the expiry
# (ms), the node.  Returns 1 if the key was still there, 0 if it had
# expired (others may have swept the node's members: put them back).
NODE_BEAT = """
local alive = redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'XX')
if not alive then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
redis.call('SADD', KEYS[2], ARGV[2])
if alive then return 1 end
return 0
"""

# A node back after its members were swept puts them back, each at its
# old place, and tells the rooms they are online again.  KEYS: the
# node's memberships, then per membership the room's members and its
# presence stream; ARGV: the node, the presence cap, then per membership
# the room key, the member, its join sequence, its name.
REASSERT_MEMBERS = """
local back = 0
for i = 0, (#ARGV - 2) / 4 - 1 do
  local a = 3 + i * 4
  if redis.call('ZADD', KEYS[2 + i * 2], 'NX', ARGV[a + 2], ARGV[a + 1]) == 1 then
    back = back + 1
    redis.call('XADD', KEYS[3 + i * 2], 'MAXLEN', '~', ARGV[2], '*', 'user', ARGV[a + 3], 'status', 'online', 'node', ARGV[1])
  end
  redis.call('SADD', KEYS[1], ARGV[a] .. ' ' .. ARGV[a + 1])
end
return back
"""

# Remove the members of dead nodes (whose key expired) from their rooms,
# telling each room they went offline, unless the name is still a member
# there through a live node (an account's sessions on several nodes).
# KEYS: the nodes set; ARGV: the prefixes of node keys, node membership
# sets, rooms' member sets and presence streams, then the presence cap.
# The keys it touches beyond KEYS are found in Redis (a single Redis, not
# Redis Cluster).  Returns two items per removed member: the room key and
# the name.
SWEEP_NODES = """
local removed = {}
local nodes = redis.call('SMEMBERS', KEYS[1])
local function elsewhere(room, node, name)
  for _, other in ipairs(nodes) do
    if other ~= node and redis.call('EXISTS', ARGV[1] .. other) == 1
       and redis.call('ZSCORE', ARGV[3] .. room, other .. '|' .. name) then
      return true
    end
  end
  return false
end
for _, node in ipairs(nodes) do
  if redis.call('EXISTS', ARGV[1] .. node) == 0 then
    local set = ARGV[2] .. node
    for _, entry in ipairs(redis.call('SMEMBERS', set)) do
      local space = string.find(entry, ' ', 1, true)
      if space then
        local room = string.sub(entry, 1, space - 1)
        local member = string.sub(entry, space + 1)
        if redis.call('ZREM', ARGV[3] .. room, member) == 1 then
          local bar = string.find(member, '|', 1, true) or 0
          local name = string.sub(member, bar + 1)
          if not elsewhere(room, node, name) then
            redis.call('XADD', ARGV[4] .. room, 'MAXLEN', '~', ARGV[5], '*', 'user', name, 'status', 'offline', 'node', node)
          end
          removed[#removed + 1] = room
          removed[#removed + 1] = name
        end
      end
    end
    redis.call('DEL', set)
    redis.call('SREM', KEYS[1], node)
  end
end
return removed
"""


# == accounts (PROTOCOL.md sections 6.3 to 6.5, 6.8) ==========================

#: Accounts: lower-cased name -> the record's JSON (name, PHC hash, created).
ACCOUNTS_KEY = "chatd:accounts"
#: Accounts' names as registered, by lower-cased name (what every node caches).
ACCOUNT_NAMES_KEY = "chatd:accountnames"
#: Bans and mutes: "<kind> <room key> <name key>" -> the restriction's JSON.
RESTRICTIONS_KEY = "chatd:restrictions"
#: The stream every node follows: accounts created, bans and mutes set or lifted.
ACCOUNT_LOG = "chatd:accountlog"
#: The sequence that keeps accounts' rooms in the order they were joined.
MEMBERSHIP_SEQ_KEY = "chatd:membershipseq"
#: Kept DMs: ``<prefix><owner>:<conversation>``, a sorted set of JSON by id.
DM_KEPT_PREFIX = "chatd:dmkept:"
#: ``<prefix><owner>``: a hash of the owner's conversations -> their newest kept id.
DM_CONVS_PREFIX = "chatd:dmconvs:"
#: ``<prefix><owner>``: a hash of the owner's conversations -> the newest id delivered.
DM_MARKS_PREFIX = "chatd:dmmarks:"
#: What an account's name key holds (``<ACCOUNT_HOLDER>|<Name>``): no node
#: owns it, every node with a session of the account refreshes it.
ACCOUNT_HOLDER = "*"


def memberships_key(account: str) -> str:
    """The rooms an account is in: a sorted set of room keys by join sequence."""
    return f"chatd:memberships:{account}"


def room_accounts_key(room: str) -> str:
    """The accounts in a room (a set of lower-cased names)."""
    return f"chatd:roomaccounts:{room}"


def sessions_key(account: str) -> str:
    """An account's sessions: a hash of node -> how many it has there."""
    return f"chatd:sessions:{account}"


def throttle_key(kind: str, who: str) -> str:
    """A throttle's window of ``kind`` (``address``, ``account``, ``register``) for ``who``."""
    return f"chatd:throttle:{kind}:{who}"


# Every account's name, every ban and mute, and where the log ends (read
# from there).  KEYS: the names hash, the restrictions hash, the log.
LOAD_ACCOUNTS = """
local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local position = '0-0'
if #top > 0 then position = top[1][1] end
return {position, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

# Keep an account.  KEYS: the accounts hash, the names hash, the log;
# ARGV: the lower-cased name, the record's JSON, the name as registered,
# the log cap, the node, and "1" to refuse a name that is an account
# already (a registration) or "0" to replace it (a new password hash).
# A new account goes to the log.  Returns 1 if kept, 0 if refused.
SAVE_ACCOUNT = """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if exists and ARGV[6] == '1' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if not exists then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'account', 'key', ARGV[1], 'name', ARGV[3],
             'node', ARGV[5])
end
return 1
"""

# Set (ARGV[2] a JSON record) or lift (ARGV[2] "") a ban or a mute, and
# log it.  KEYS: the restrictions hash, the log; ARGV: the field
# ("<kind> <room key> <name key>"), the record or "", the log cap, the
# kind, the room, the name, who did it, the node.  Returns 1 if a
# restriction was set or lifted, 0 if there was none to lift.
SET_RESTRICTION = """
local changed = 1
if ARGV[2] == '' then
  changed = redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', ARGV[4], 'room', ARGV[5], 'name', ARGV[6],
           'record', ARGV[2], 'by', ARGV[7], 'node', ARGV[8])
return changed
"""

# An account is in a room (one already in it keeps its place).  KEYS: its
# rooms, the room's accounts, the sequence; ARGV: the room key, the account.
ADD_MEMBERSHIP = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# An account left a room.  KEYS: its rooms, the room's accounts; ARGV:
# the room key, the account.
REMOVE_MEMBERSHIP = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# The DMs kept for an owner above its marks, taken: the marks move past
# what is returned in the same step, so two logins at once (on any nodes)
# never get the same DM.  KEYS: the owner's conversations, its marks;
# ARGV: the prefix of its kept DMs' keys (``<DM_KEPT_PREFIX><owner>:``),
# how many per conversation.  Returns three items per conversation with
# DMs to give: its key, 1 if more wait beyond them (else 0), and the DMs
# (JSON, oldest first).
TAKE_UNDELIVERED = """
local limit = tonumber(ARGV[2])
local out = {}
local convs = redis.call('HGETALL', KEYS[1])
for i = 1, #convs, 2 do
  local conv = convs[i]
  local mark = tonumber(redis.call('HGET', KEYS[2], conv) or '0') or 0
  if (tonumber(convs[i + 1]) or 0) > mark then
    local page = redis.call('ZRANGEBYSCORE', ARGV[1] .. conv, '(' .. string.format('%d', mark), '+inf',
                            'LIMIT', 0, limit + 1)
    local more = 0
    if #page > limit then
      more = 1
      table.remove(page)
    end
    if #page > 0 then
      local last = redis.call('ZSCORE', ARGV[1] .. conv, page[#page])
      redis.call('HSET', KEYS[2], conv, string.format('%d', tonumber(last)))
      out[#out + 1] = conv
      out[#out + 1] = more
      out[#out + 1] = page
    end
  end
end
return out
"""

# Raise delivery marks (a mark never goes back).  ARGV: the marks' key
# prefix, then (owner, conversation, id) for each.
MARK_DELIVERED = """
for i = 2, #ARGV, 3 do
  local key = ARGV[1] .. ARGV[i]
  local id = tonumber(ARGV[i + 2])
  local mark = tonumber(redis.call('HGET', key, ARGV[i + 1]) or '0') or 0
  if id > mark then redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2]) end
end
return 1
"""

# -- an account's sessions on every node --------------------------------------

# Counts sessions on live nodes (a dead node's count is dropped: its key,
# ``<node key prefix><node>``, expired).  Shared by the scripts below.
SESSION_FUNCTIONS = """
local function live_sessions(hash, node, prefix)
  local total = 0
  local fields = redis.call('HGETALL', hash)
  for i = 1, #fields, 2 do
    if fields[i] ~= node and redis.call('EXISTS', prefix .. fields[i]) == 0 then
      redis.call('HDEL', hash, fields[i])
    else
      total = total + (tonumber(fields[i + 1]) or 0)
    end
  end
  return total
end
"""

# One more session of an account on a node.  KEYS: the name key, the
# login sequence, the users set, the account's sessions; ARGV: the value
# (``*|<Name>``), the expiry (ms), the lower-cased name, the node, the
# most sessions, the node keys' prefix.  Returns {1, seq} for the
# account's first session anywhere, {0, seq} for another, {-1} when a
# guest holds the name, {-2} when the account has the most sessions.
ADD_SESSION = SESSION_FUNCTIONS + """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return {-1} end
local total = live_sessions(KEYS[4], ARGV[4], ARGV[6])
if total >= tonumber(ARGV[5]) then return {-2} end
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local seq = redis.call('ZSCORE', KEYS[3], ARGV[3])
if not seq then
  seq = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[3], seq, ARGV[3])
end
local first = 0
if total == 0 then first = 1 end
return {first, tonumber(seq)}
"""

# A session of an account on a node ended (ARGV[4] "1"), or all of them
# (ARGV[4] "all": the node stops).  KEYS: the name key, the users set,
# the account's sessions; ARGV: the value, the lower-cased name, the node,
# "1" or "all", the node keys' prefix.  After the account's last session
# anywhere the name is free: returns 1 then, else 0.
DROP_SESSION = SESSION_FUNCTIONS + """
if ARGV[4] == 'all' then
  redis.call('HDEL', KEYS[3], ARGV[3])
elseif redis.call('HINCRBY', KEYS[3], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[3])
end
if live_sessions(KEYS[3], ARGV[3], ARGV[5]) > 0 then return 0 end
redis.call('DEL', KEYS[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# A node's heartbeat for its accounts: each name refreshed (taken again
# if it expired meanwhile, back in the login order), and the node's count
# of the account's sessions set.  KEYS: the users set, then per account
# its name key and its sessions; ARGV: the expiry (ms), the node, then
# per account (value, lower-cased name, login sequence, sessions here).
# Returns the names a guest took meanwhile.
REFRESH_ACCOUNTS = """
local lost = {}
for i = 0, (#KEYS - 1) / 2 - 1 do
  local name_key, sessions = KEYS[2 + i * 2], KEYS[3 + i * 2]
  local a = 3 + i * 4
  local value = redis.call('GET', name_key)
  if value == false or value == ARGV[a] then
    redis.call('SET', name_key, ARGV[a], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], 'NX', ARGV[a + 2], ARGV[a + 1])
    redis.call('HSET', sessions, ARGV[2], ARGV[a + 3])
    redis.call('PEXPIRE', sessions, ARGV[1])
  else
    table.insert(lost, ARGV[a + 1])
  end
end
return lost
"""

# -- the login throttle and the registration rate ------------------------------

# Events older than the window leave it first.  Shared by the scripts below.
WINDOW_FUNCTIONS = """
local function in_window(key, now, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  return redis.call('ZCARD', key)
end
"""

# Whether a login may be checked: KEYS: the address's and the account's
# failures; ARGV: now (s), the window (s), the failures that refuse.
# Returns 1 (allowed) or 0.
LOGIN_ALLOWED = WINDOW_FUNCTIONS + """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  if in_window(key, now, window) >= limit then return 0 end
end
return 1
"""

# A failed login: KEYS: the address's and the account's failures; ARGV:
# now (s), the window (ms), a member unique to this failure, the most
# remembered per key.
LOGIN_FAILED = """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[1], ARGV[3])
  redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[4]) + 1))
  redis.call('PEXPIRE', key, ARGV[2])
end
return 1
"""

# Take one of an address's registrations: KEYS: its registrations; ARGV:
# now (s), the window (s), the rate, a member for this one, the window
# (ms).  Returns 1 if taken, 0 if none is left.
RESERVE_REGISTRATION = WINDOW_FUNCTIONS + """
if in_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
