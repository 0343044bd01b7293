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
for i = 2, #ARGV, 5 do
  local fields = {'sender', ARGV[i], 'text', ARGV[i + 1], 'ts', ARGV[i + 2], 'node', ARGV[i + 3], 'token', ARGV[i + 4]}
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
# name key; ARGV[1] the stream cap, then six fields per message (sender,
# text, timestamp, node, token, conversation key).  A recipient whose
# name nobody holds gets nothing (no id is taken); the others' messages
# get the conversation's next id and carry the recipient's name as its
# holder logged in.  Returns two items per message: the id (0: refused)
# and that name.  The stream is repaired as PUBLISH repairs a room's.
DM_PUBLISH = REPAIR_FUNCTIONS + """
local seq = redis.call('GET', KEYS[1])
if seq and not (string.match(seq, '^%d+$') and #seq <= 15) then repair(KEYS[1], KEYS[2], true) end
local out = {}
local count = (#ARGV - 1) / 6
for m = 0, count - 1 do
  local a = 2 + m * 6
  local holder = redis.call('GET', KEYS[4 + m * 2])
  local bar = holder and string.find(holder, '|', 1, true)
  if not bar then
    out[#out + 1] = 0
    out[#out + 1] = ''
  else
    local to = string.sub(holder, bar + 1)
    local id = redis.call('INCR', KEYS[3 + m * 2])
    local fields = {'conv', ARGV[a + 5], 'id', string.format('%d', id), 'sender', ARGV[a], 'text', ARGV[a + 1],
                    'ts', ARGV[a + 2], 'to', to, 'node', ARGV[a + 3], 'token', ARGV[a + 4]}
    local n = redis.call('INCR', KEYS[1])
    local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', n), unpack(fields))
    if type(added) == 'table' and added.err then
      redis.call('SET', KEYS[1], string.format('%d', n - 1))
      repair(KEYS[1], KEYS[2], true)
      n = redis.call('INCR', KEYS[1])
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', n), unpack(fields))
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
# telling each room they went offline.  KEYS: the nodes set; ARGV: the
# prefixes of node keys, node membership sets, rooms' member sets and
# presence streams, then the presence cap.  The keys it touches beyond
# KEYS are found in Redis (a single Redis, not Redis Cluster).  Returns
# two items per removed member: the room key and the name.
SWEEP_NODES = """
local removed = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
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
          redis.call('XADD', ARGV[4] .. room, 'MAXLEN', '~', ARGV[5], '*', 'user', name, 'status', 'offline', 'node', node)
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
