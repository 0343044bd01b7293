// chatd browser client: plain JavaScript, same origin only.
// Speaks protocol 2 over /ws (PROTOCOL.md §5, §6): hello, login, rooms
// (join, part, topic), direct messages, presence per room for the member
// lists, and history paging to resume every room after a reconnect.
// Everything the server sends is shown with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const statusEl = $("status"), loginForm = $("login-form"), loginName = $("login-name");
  const loginError = $("login-error"), chat = $("chat"), messagesEl = $("messages");
  const sendForm = $("send-form"), messageInput = $("message"), chatError = $("chat-error");
  const usersEl = $("users"), usersTitle = $("users-title"), roomsEl = $("rooms"), dmsEl = $("dms");
  const joinForm = $("join-form"), joinName = $("join-name"), partButton = $("part");
  const titleEl = $("conv-title"), topicEl = $("topic");

  const NAME_RULE = /^[A-Za-z0-9]{1,32}$/;     // §4 (JS "$" has no trailing-newline slack)
  const ROOM_RULE = /^#[A-Za-z0-9_-]{1,48}$/;  // §6.2
  const LOBBY = "#lobby", LOBBY_KEY = "#lobby";
  const RESUME_PAGE = 500;    // the largest history page the server gives
  const MAX_BACKOFF_MS = 5000; // capped: back within seconds of the server's return

  let socket = null;
  let name = null;            // logged in (or logging in) as
  let loggedIn = false;
  // hello answered on this connection. A login sent before that would be
  // sent again by the hello handler, and the second answered
  // already_logged_in, which looked like a failed login.
  let ready = false;
  let everLoggedIn = false;   // a later login is a reconnect: resume, count what was missed
  let replaying = false;      // this session's login history replays a reconnect's gap
  let backoff = 500;
  let wasConnected = false;

  // Conversations, keyed case-insensitively (names and room names compare
  // so, §6): a room by its lower-cased name ("#dev"), a DM by "@" and the
  // other party's lower-cased name (a user name has no "#", so the two
  // never clash). Map order is the order they were opened: the sidebar's.
  const convs = new Map();
  let current = null;         // key of the conversation on screen

  // ---- small helpers ----------------------------------------------------

  function setStatus(text) {
    statusEl.textContent = text;
    statusEl.className = "status " + text.split(" ")[0];
  }

  function socketUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function send(request, content, extra) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(Object.assign({ request: request, content: content }, extra || {})));
    }
  }

  function sameName(a, b) {
    return typeof a === "string" && typeof b === "string" && a.toLowerCase() === b.toLowerCase();
  }

  // Refs are "what|detail" strings: what the request was, and for which
  // conversation, so that an error (which carries no "room") finds its place.
  function splitRef(ref) {
    if (typeof ref !== "string") return ["", ""];
    const bar = ref.indexOf("|");
    return bar < 0 ? [ref, ""] : [ref.slice(0, bar), ref.slice(bar + 1)];
  }

  function hhmm(timestamp) {
    const when = new Date(timestamp);
    if (isNaN(when.getTime())) return "--:--";
    return String(when.getHours()).padStart(2, "0") + ":" + String(when.getMinutes()).padStart(2, "0");
  }

  function atBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  // ---- conversations ----------------------------------------------------

  function newConversation(key, kind, label) {
    // One list per conversation, hidden when another is on screen, so that
    // switching keeps its messages (and, with rememberScroll, its place).
    const list = document.createElement("ol");
    list.className = "messages";
    list.dataset.key = key;
    list.hidden = true;
    messagesEl.append(list);
    const conv = {
      key: key, kind: kind, label: label, list: list,
      ids: new Set(), lastId: 0, unread: 0, topic: "", members: new Map(),
      joined: kind === "room", scrollTop: 0, stuck: true,
    };
    convs.set(key, conv);
    renderSidebar();
    return conv;
  }

  function roomConv(roomName) {
    const key = roomName.toLowerCase();
    return convs.get(key) || newConversation(key, "room", roomName);
  }

  function dmConv(other) {
    const key = "@" + other.toLowerCase();
    return convs.get(key) || newConversation(key, "dm", other);
  }

  function lobby() { return roomConv(LOBBY); }
  function currentConv() { return convs.get(current) || lobby(); }

  // Where a message belongs: a DM ("to") is the conversation with the other
  // party; another room's message names its room; #lobby's names none (§6.1).
  function conversationOf(message) {
    if (typeof message.to === "string") {
      return dmConv(sameName(message.sender, name) ? message.to : String(message.sender));
    }
    if (typeof message.room === "string") return roomConv(message.room);
    return lobby();
  }

  function historyConversation(response) {
    if (typeof response.with === "string") return dmConv(response.with);
    if (typeof response.room === "string") return roomConv(response.room);
    return lobby();
  }

  function rememberScroll(conv) {
    conv.stuck = atBottom(conv.list);
    conv.scrollTop = conv.list.scrollTop;
  }

  function restoreScroll(conv) {
    // A list that was at the bottom follows what arrived while it was hidden.
    conv.list.scrollTop = conv.stuck ? conv.list.scrollHeight : conv.scrollTop;
  }

  function switchTo(conv) {
    const old = convs.get(current);
    if (old && old !== conv) {
      rememberScroll(old);
      old.list.hidden = true;
    }
    current = conv.key;
    conv.list.hidden = false;
    restoreScroll(conv);
    conv.unread = 0;
    chatError.textContent = "";
    renderSidebar();
    renderHeader();
    renderUsers();
  }

  function closeConversation(conv) {
    if (conv.key === LOBBY_KEY) return;
    if (current === conv.key) switchTo(lobby());
    conv.list.remove();
    convs.delete(conv.key);
    renderSidebar();
  }

  function setMembers(conv, list) {
    conv.members.clear();
    for (const user of list) if (typeof user === "string" && user) conv.members.set(user.toLowerCase(), user);
    if (conv.key === current) renderUsers();
  }

  function setTopic(conv, topic) {
    conv.topic = typeof topic === "string" ? topic : "";
    if (conv.key === current) renderHeader();
  }

  // ---- rendering --------------------------------------------------------

  function messageItem(message) {
    const item = document.createElement("li");
    item.className = "message";
    if (typeof message.id === "number") item.dataset.id = String(message.id);
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = hhmm(message.timestamp);
    time.title = String(message.timestamp);
    const sender = document.createElement("span");
    sender.className = "sender";
    sender.textContent = String(message.sender) + ":";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = String(message.content);
    item.append(time, sender, text);
    return item;
  }

  // The first shown message with an id above `id` (null: none, append).
  // After a reconnect a room's join history (its newest messages), the
  // resume pages (what came after our last id) and live messages arrive
  // interleaved; inserting by id keeps each list in id order.
  function firstMessageAfter(list, id) {
    let after = null;
    for (let item = list.lastElementChild; item; item = item.previousElementSibling) {
      if (item.dataset.id === undefined) continue; // a notice
      if (Number(item.dataset.id) > id) after = item; else break;
    }
    return after;
  }

  // Show a message once: ids are per room and per conversation, so each
  // conversation keeps the set of ids it shows. `counts`: a message new to
  // us (live, or missed while away) that raises the unread count.
  function addMessage(conv, message, counts) {
    const id = typeof message.id === "number" ? message.id : null;
    if (id !== null) {
      if (conv.ids.has(id)) return;
      conv.ids.add(id);
    }
    const onScreen = conv.key === current;
    const stick = onScreen && atBottom(conv.list);
    conv.list.insertBefore(messageItem(message), id === null ? null : firstMessageAfter(conv.list, id));
    if (id !== null && id > conv.lastId) conv.lastId = id;
    if (stick) conv.list.scrollTop = conv.list.scrollHeight;
    if (counts && !onScreen && !sameName(message.sender, name)) {
      conv.unread += 1;
      renderSidebar();
    }
  }

  function showNotice(conv, text) {
    const stick = conv.key === current && atBottom(conv.list);
    const item = document.createElement("li");
    item.className = "notice";
    item.textContent = text;
    conv.list.append(item);
    if (stick) conv.list.scrollTop = conv.list.scrollHeight;
  }

  function sidebarItem(conv) {
    const item = document.createElement("li");
    item.dataset.key = conv.key;
    if (conv.key === current) {
      item.className = "current";
      item.setAttribute("aria-current", "true");
    }
    if (conv.unread) item.classList.add("has-unread");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "conv";
    button.textContent = conv.label;
    button.addEventListener("click", function () { switchTo(conv); messageInput.focus(); });
    const badge = document.createElement("span");
    badge.className = "unread";
    badge.textContent = String(conv.unread);
    badge.title = conv.unread + " unread";
    badge.hidden = conv.unread === 0;
    item.append(button, badge);
    return item;
  }

  function renderSidebar() {
    const rooms = [], dms = [];
    let unread = 0;
    for (const conv of convs.values()) {
      (conv.kind === "room" ? rooms : dms).push(sidebarItem(conv));
      unread += conv.unread;
    }
    roomsEl.replaceChildren(...rooms);
    dmsEl.replaceChildren(...dms);
    document.title = unread ? "(" + unread + ") chatd" : "chatd";
  }

  function renderHeader() {
    const conv = currentConv();
    titleEl.textContent = conv.label;
    if (conv.kind === "dm") {
      topicEl.textContent = "Direct messages with " + conv.label + " (not kept for guests)";
      topicEl.className = "topic empty";
    } else {
      topicEl.textContent = conv.topic || "No topic";
      topicEl.className = conv.topic ? "topic" : "topic empty";
    }
    partButton.hidden = conv.key === LOBBY_KEY;
    partButton.textContent = conv.kind === "dm" || !conv.joined ? "Close" : "Leave";
  }

  function userItem(user) {
    const item = document.createElement("li");
    if (sameName(user, name)) {
      const me = document.createElement("span");
      me.className = "me";
      me.textContent = user;
      item.append(me);
      return item;
    }
    // Clicking someone opens (or shows) the direct conversation with them.
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = user;
    button.title = "Message " + user + " directly";
    button.addEventListener("click", function () { switchTo(dmConv(user)); messageInput.focus(); });
    item.append(button);
    return item;
  }

  function renderUsers() {
    const conv = currentConv();
    let users;
    if (conv.kind === "dm") {
      usersTitle.textContent = "Conversation";
      users = sameName(conv.label, name) ? [conv.label] : [name, conv.label];
    } else {
      usersTitle.textContent = "Here now";
      users = Array.from(conv.members.values());
    }
    usersEl.replaceChildren(...users.filter(Boolean).map(userItem));
  }

  function showChat(visible) {
    const conv = convs.get(current);
    const wasHidden = chat.hidden;
    if (!visible && !wasHidden && conv) rememberScroll(conv);
    loginForm.hidden = visible;
    chat.hidden = !visible;
    if (visible && wasHidden && conv) restoreScroll(conv);
  }

  // ---- requests ---------------------------------------------------------

  function requestAfter(conv, after) {
    const content = { after: after, limit: RESUME_PAGE };
    if (conv.key !== LOBBY_KEY) content.room = conv.label; // #lobby's history names no room
    send("history", content, { ref: "resume|" + conv.key });
  }

  // After a reconnect the server has forgotten this guest's rooms (or was
  // restarted): page #lobby from the last id seen, and join every other room
  // again; each join's answer then asks for that room's gap (onJoined).
  // DMs between guests are never stored (§6.3): there is nothing to page.
  function resumeAll() {
    const home = lobby();
    if (home.lastId > 0) requestAfter(home, home.lastId);
    for (const conv of convs.values()) {
      if (conv.kind === "room" && conv.key !== LOBBY_KEY && conv.joined) {
        send("join", conv.label, { ref: "rejoin|" + conv.key });
      }
    }
  }

  function joinRoom(raw) {
    let wanted = raw.trim();
    if (wanted && wanted[0] !== "#") wanted = "#" + wanted;
    if (!ROOM_RULE.test(wanted)) {
      chatError.textContent = "A room name is # and then 1 to 48 letters, digits, _ or -.";
      return false;
    }
    const known = convs.get(wanted.toLowerCase());
    if (known && known.joined) {
      switchTo(known);
      return true;
    }
    send("join", wanted, { ref: "join|" + wanted.toLowerCase() });
    return true;
  }

  function leaveCurrent() {
    const conv = currentConv();
    if (conv.key === LOBBY_KEY) return;
    // A DM, or a room we are no longer in, is only closed here.
    if (conv.kind === "dm" || !conv.joined) closeConversation(conv);
    else send("part", conv.label, { ref: "part|" + conv.key });
  }

  // "/topic" shows the topic, "/topic text" sets it, "/topic -delete" clears it.
  function topicCommand(arg) {
    const conv = currentConv();
    if (conv.kind !== "room") {
      chatError.textContent = "Only rooms have a topic.";
    } else if (!arg) {
      send("topic", { room: conv.label }, { ref: "topicshow|" + conv.key });
    } else {
      send("topic", { room: conv.label, topic: arg === "-delete" ? "" : arg }, { ref: "topicset|" + conv.key });
    }
  }

  // The few slash commands; any other text (even "/shrug") is sent as typed.
  function command(text) {
    const match = /^\/(topic|join|part)(?:\s+([\s\S]*))?$/i.exec(text);
    if (!match) return false;
    const verb = match[1].toLowerCase(), arg = (match[2] || "").trim();
    if (verb === "topic") topicCommand(arg);
    else if (verb === "join") joinRoom(arg);
    else leaveCurrent();
    return true;
  }

  function sendText(text) {
    const conv = currentConv();
    let extra = {};
    if (conv.kind === "dm") extra = { to: conv.label };
    else if (conv.key !== LOBBY_KEY) extra = { room: conv.label }; // #lobby: a plain v1 msg
    send("msg", text, extra);
  }

  // ---- responses --------------------------------------------------------

  function onLogin(response) {
    const kind = response.response;
    if (kind === "info") {
      loggedIn = true;
      replaying = everLoggedIn;
      everLoggedIn = true;
      showChat(true);
      messageInput.focus();
      send("names", null, { ref: "names" });
      send("topic", { room: LOBBY }, { ref: "lobbytopic" });
      if (replaying) resumeAll();
    } else if (kind === "error") {
      if (loggedIn) return; // a second submit's login: the first one stands
      name = null;
      loginError.textContent = String(response.content);
      showChat(false);
      loginName.focus();
    } else if (kind === "history") {
      addHistory(lobby(), response.content, replaying);
    }
  }

  function addHistory(conv, page, counts) {
    for (const message of Array.isArray(page) ? page : []) {
      if (message && typeof message === "object") addMessage(conv, message, counts);
    }
  }

  function onHistory(response, tag) {
    const conv = historyConversation(response);
    const page = Array.isArray(response.content) ? response.content : [];
    // A first join's history is the room's past, not news; a rejoin's or a
    // resume page's is what we missed.
    addHistory(conv, page, tag === "rejoin" || tag === "resume");
    if (tag === "resume" && response.more === true && page.length) {
      // Page on from this page's end, not from conv.lastId: the join
      // history may already have brought newer messages past a gap.
      const ids = page.map((m) => (m && typeof m.id === "number" ? m.id : 0));
      requestAfter(conv, Math.max(...ids));
    }
  }

  function onJoined(response, tag) {
    const conv = roomConv(response.room);
    conv.label = response.room; // the creator's spelling (§6)
    conv.joined = true;
    setMembers(conv, Array.isArray(response.members) ? response.members : []);
    setTopic(conv, response.topic);
    if (tag === "join") switchTo(conv);
    else if (conv.lastId > 0) requestAfter(conv, conv.lastId); // its history comes first, deduped
    renderSidebar();
    if (conv.key === current) renderHeader();
  }

  function onInfo(response, tag, detail) {
    const hasRoom = typeof response.room === "string";
    if (tag === "names" && !hasRoom) {
      setMembers(lobby(), String(response.content).split(", "));
    } else if ((tag === "join" || tag === "rejoin") && hasRoom) {
      onJoined(response, tag);
    } else if (tag === "part" && hasRoom) {
      const conv = convs.get(response.room.toLowerCase());
      if (conv) closeConversation(conv);
    } else if (tag === "lobbytopic" && hasRoom) {
      setTopic(lobby(), response.topic);
    } else if (tag === "topicshow" && hasRoom) {
      const conv = roomConv(response.room);
      setTopic(conv, response.topic);
      showNotice(conv, conv.topic ? "Topic: " + conv.topic : "No topic is set.");
    } else if (tag === "topicset") {
      // The topic response to every member (us too) says it: onTopic.
    } else if (response.content === "Server shutting down") {
      showNotice(currentConv(), "The server is shutting down; reconnecting when it is back.");
    } else if (hasRoom && convs.has(response.room.toLowerCase())) {
      showNotice(convs.get(response.room.toLowerCase()), String(response.content)); // e.g. kicked
    }
  }

  function onError(response, tag, detail) {
    const text = String(response.content);
    if (tag === "lobbytopic") return; // a server without topics: nothing to show
    if (tag === "rejoin" || tag === "resume") {
      const conv = convs.get(detail);
      if (!conv) return;
      if (tag === "rejoin") {
        conv.joined = false;
        if (conv.key === current) renderHeader();
      }
      showNotice(conv, "Could not rejoin " + conv.label + ": " + text);
      return;
    }
    chatError.textContent = text;
  }

  function onPresence(content) {
    if (!content || typeof content !== "object") return;
    const user = String(content.user);
    // Presence names its room (§5); a server before rooms sent only #lobby's.
    const conv = convs.get((typeof content.room === "string" ? content.room : LOBBY).toLowerCase());
    if (!conv) return;
    if (content.status === "online") {
      conv.members.set(user.toLowerCase(), user);
    } else {
      conv.members.delete(user.toLowerCase());
      if (sameName(user, name) && conv.key !== LOBBY_KEY) {
        // Removed by someone else (kick, ban): no longer ours to rejoin.
        conv.joined = false;
        const how = content.reason ? " (" + content.reason + (content.by ? " by " + content.by : "") + ")" : "";
        showNotice(conv, "You are no longer in " + conv.label + how + ".");
        if (conv.key === current) renderHeader();
      }
    }
    if (conv.key === current) renderUsers();
  }

  function onTopic(content) {
    if (!content || typeof content !== "object" || typeof content.room !== "string") return;
    const conv = convs.get(content.room.toLowerCase());
    if (!conv) return;
    setTopic(conv, content.topic);
    const by = typeof content.by === "string" ? content.by : "Someone";
    showNotice(conv, conv.topic ? by + " set the topic: " + conv.topic : by + " cleared the topic.");
  }

  function handle(response) {
    const kind = response.response;
    const [tag, detail] = splitRef(response.ref);
    if (kind === "hello") {
      ready = true;
      if (name && !loggedIn) send("login", name, { ref: "login" });
    } else if (tag === "login") {
      onLogin(response);
    } else if (kind === "message") {
      addMessage(conversationOf(response), response, true);
    } else if (kind === "history") {
      onHistory(response, tag);
    } else if (kind === "info") {
      onInfo(response, tag, detail);
    } else if (kind === "error") {
      onError(response, tag, detail);
    } else if (kind === "presence") {
      onPresence(response.content);
    } else if (kind === "topic") {
      onTopic(response.content);
    }
  }

  // ---- connection -------------------------------------------------------

  function connect() {
    setStatus(wasConnected ? "reconnecting" : "connecting");
    socket = new WebSocket(socketUrl());
    socket.onopen = function () {
      backoff = 500;
      wasConnected = true;
      loggedIn = false;
      ready = false;
      setStatus("connected");
      send("hello", { protocol: 2, client: "chatd-web/0.2" });
    };
    socket.onmessage = function (event) {
      let response;
      try { response = JSON.parse(event.data); } catch (e) { return; }
      if (response && typeof response === "object") handle(response);
    };
    socket.onclose = function () {
      socket = null;
      loggedIn = false;
      ready = false;
      setStatus(wasConnected ? "disconnected" : "disconnected (server unreachable)");
      const delay = backoff;
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
      setTimeout(connect, delay);
      setTimeout(function () { if (!socket || socket.readyState !== WebSocket.OPEN) setStatus("reconnecting"); }, Math.min(delay, 1000));
    };
  }

  // ---- forms ------------------------------------------------------------

  loginForm.addEventListener("submit", function (event) {
    event.preventDefault();
    loginError.textContent = "";
    const wanted = loginName.value.trim();
    if (!NAME_RULE.test(wanted)) {
      loginError.textContent = "Use 1 to 32 letters or digits.";
      return;
    }
    name = wanted;
    if (ready && !loggedIn) send("login", name, { ref: "login" }); // else once hello is answered
  });

  sendForm.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = messageInput.value;
    if (!text.trim()) return;
    if (!loggedIn) {
      chatError.textContent = "Not connected: try again once the status says connected.";
      return;
    }
    chatError.textContent = "";
    if (!command(text.trim())) sendText(text);
    messageInput.value = "";
  });

  joinForm.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!loggedIn) {
      chatError.textContent = "Not connected: try again once the status says connected.";
      return;
    }
    chatError.textContent = "";
    if (joinRoom(joinName.value)) joinName.value = "";
  });

  partButton.addEventListener("click", function () {
    const conv = currentConv();
    if (loggedIn || conv.kind === "dm" || !conv.joined) leaveCurrent();
    else chatError.textContent = "Not connected: try again once the status says connected.";
  });

  switchTo(lobby());
  connect();
})();
