// chatd browser client: plain JavaScript, same origin only.
// Speaks protocol 2 over /ws (PROTOCOL.md §5, §6): hello, login as a guest
// or to an account (register, password), rooms (join, part, topic), direct
// messages, presence per room for the member lists, history paging to
// resume every room after a reconnect, and room moderation (§6.5): ops (@)
// and voiced (+) in member lists, a member's menu for room ops, and clear
// notices when we are kicked, banned or muted.
// Everything the server sends is shown with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const statusEl = $("status"), loginForm = $("login-form"), loginName = $("login-name");
  const loginPassword = $("login-password"), passwordRow = $("password-row"), registerButton = $("register-button");
  const loginError = $("login-error"), chat = $("chat"), messagesEl = $("messages");
  const sendForm = $("send-form"), messageInput = $("message"), chatError = $("chat-error");
  const usersEl = $("users"), usersTitle = $("users-title"), roomsEl = $("rooms"), dmsEl = $("dms");
  const joinForm = $("join-form"), joinName = $("join-name"), partButton = $("part");
  const titleEl = $("conv-title"), topicEl = $("topic"), roomStateEl = $("room-state");
  const accountEl = $("account"), accountName = $("account-name"), accountKind = $("account-kind");
  const alertEl = $("alert"), alertText = $("alert-text"), alertClose = $("alert-close");
  const invitesBox = $("invites-box"), invitesEl = $("invites");
  const passwordBox = $("password-box"), passwordForm = $("password-form"), oldPassword = $("old-password");
  const newPassword = $("new-password"), passwordResult = $("password-result");
  const menuEl = $("member-menu"), menuTitle = $("menu-title"), menuComment = $("menu-comment");
  const menuDuration = $("menu-duration"), menuActions = $("menu-actions"), menuClose = $("menu-close");
  const modesBox = $("modes-box"), modesEl = $("modes"), inviteForm = $("invite-form"), inviteName = $("invite-name");

  const NAME_RULE = /^[A-Za-z0-9]{1,32}$/;     // §4, a guest's name (JS "$" has no trailing-newline slack)
  const ACCOUNT_RULE = /^(?:[A-Za-z0-9]{1,32}|[A-Za-z_][A-Za-z0-9_-]{0,31})$/; // §6.4
  const ROOM_RULE = /^#[A-Za-z0-9_-]{1,48}$/;  // §6.2
  const LOBBY = "#lobby", LOBBY_KEY = "#lobby";
  const RESUME_PAGE = 500;    // the largest history page the server gives
  const DM_PAST = 100;        // an account's stored DMs shown when a conversation opens
  const MAX_BACKOFF_MS = 5000; // capped: back within seconds of the server's return
  const REFRESH_DELAY_MS = 300;
  // §6.2's room modes, as the settings panel shows them.
  const MODES = [
    ["invite_only", "Invite only"],
    ["moderated", "Moderated: only ops and voiced talk"],
    ["topic_ops", "Only ops set the topic"],
    ["secret", "Secret: not listed"],
    ["no_external", "Only members post"],
  ];
  const MODE_WORDS = {
    invite_only: "invite only", moderated: "moderated", topic_ops: "ops-only topic",
    secret: "secret", no_external: "members-only posting",
  };

  let socket = null;
  let name = null;            // logged in (or logging in) as
  let loggedIn = false;
  // hello answered on this connection. A login sent before that would be
  // sent again by the hello handler, and the second answered
  // already_logged_in, which looked like a failed login.
  let ready = false;
  let features = [];          // the hello's "features": "accounts" shows the password field
  let everLoggedIn = false;   // a later login is a reconnect: resume, count what was missed
  let replaying = false;      // this session's login history replays a reconnect's gap
  let backoff = 500;
  let wasConnected = false;
  // An account's password lives in this closure only: never in storage, the
  // address or the page (the input is emptied once the login succeeds). It
  // is kept to log in again after a reconnect. null: a guest.
  let password = null;
  let isAccount = false;      // this login is an account's
  let pendingRegister = null; // {username, password} until the register is answered
  let pendingNewPassword = null;
  let restored = new Set();   // rooms an account's login brought back (§6.4)
  let stopped = null;         // why #lobby removed us: no automatic reconnect
  let menuTarget = null;      // the member menu's {key, user}
  const invites = new Map();  // lower-cased room -> {room, by}

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

  function accountsOn() { return features.indexOf("accounts") >= 0; }

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

  function names(list) {
    return Array.isArray(list) ? list.filter((user) => typeof user === "string" && user) : [];
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
      // Lower-cased names holding op or voice. Names that left stay in
      // them: an account keeps its roles (§6.5), so its return is checked.
      ops: new Set(), voiced: new Set(), modes: {},
      muted: false, gone: "",  // gone: "kicked", "banned" or "left" once removed
      joined: kind === "room", scrollTop: 0, stuck: true, refreshTimer: null,
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
    const known = convs.get(key);
    if (known) return known;
    const conv = newConversation(key, "dm", other);
    // An account's DMs are stored (§6.3): show the conversation so far.
    if (isAccount && loggedIn) send("history", { with: other, limit: DM_PAST }, { ref: "dmpast|" + key });
    return conv;
  }

  function lobby() { return roomConv(LOBBY); }
  function currentConv() { return convs.get(current) || lobby(); }

  function amOp(conv) {
    return conv.kind === "room" && conv.joined && name !== null && conv.ops.has(name.toLowerCase());
  }

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
    if (current !== conv.key) closeMenu();
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
    cancelRefresh(conv);
    conv.list.remove();
    convs.delete(conv.key);
    renderSidebar();
  }

  function setMembers(conv, list) {
    conv.members.clear();
    for (const user of names(list)) conv.members.set(user.toLowerCase(), user);
    if (conv.key === current) renderUsers();
  }

  // A join's "ops" and "voiced" list the members present; what we knew of
  // absent names is kept (see newConversation).
  function setRoles(conv, ops, voiced) {
    for (const [set, list] of [[conv.ops, ops], [conv.voiced, voiced]]) {
      if (!Array.isArray(list)) continue;
      for (const user of Array.from(set)) if (conv.members.has(user)) set.delete(user);
      for (const user of names(list)) set.add(user.toLowerCase());
    }
  }

  function setModes(conv, modes) {
    if (!modes || typeof modes !== "object") return;
    for (const [flag] of MODES) if (typeof modes[flag] === "boolean") conv.modes[flag] = modes[flag];
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
    if (message.offline === true && typeof message.to === "string") {
      // Our DM to an account with no session: kept for its next login (§6.3).
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = message.to + " is offline: delivered at their next login";
      item.append(note);
    }
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

  function showNotice(conv, text, className) {
    const stick = conv.key === current && atBottom(conv.list);
    const item = document.createElement("li");
    item.className = "notice" + (className ? " " + className : "");
    item.textContent = text;
    conv.list.append(item);
    if (stick) conv.list.scrollTop = conv.list.scrollHeight;
  }

  // A notice that must not be missed (kicked, banned, muted): above the
  // messages whichever conversation is on screen, until dismissed.
  function showAlert(text) {
    alertText.textContent = text;
    alertEl.hidden = false;
  }

  function sidebarItem(conv) {
    const item = document.createElement("li");
    item.dataset.key = conv.key;
    if (conv.key === current) {
      item.className = "current";
      item.setAttribute("aria-current", "true");
    }
    if (conv.unread) item.classList.add("has-unread");
    if (conv.gone) item.classList.add("gone");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "conv";
    button.textContent = conv.label;
    button.addEventListener("click", function () { switchTo(conv); messageInput.focus(); });
    item.append(button);
    if (conv.gone || conv.muted) {
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = conv.gone || "muted";
      item.append(state);
    }
    const badge = document.createElement("span");
    badge.className = "unread";
    badge.textContent = String(conv.unread);
    badge.title = conv.unread + " unread";
    badge.hidden = conv.unread === 0;
    item.append(badge);
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
      topicEl.textContent = "Direct messages with " + conv.label +
        (isAccount ? " (kept for your account)" : " (not kept for guests)");
      topicEl.className = "topic empty";
    } else {
      topicEl.textContent = conv.topic || "No topic";
      topicEl.className = conv.topic ? "topic" : "topic empty";
    }
    let state = "";
    if (conv.gone === "kicked") state = "You were kicked from this room";
    else if (conv.gone === "banned") state = "You are banned from this room";
    else if (conv.kind === "room" && !conv.joined) state = "You are not in this room";
    else if (conv.muted) state = "You are muted here";
    else if (amOp(conv) && conv.key !== LOBBY_KEY) state = "You are an operator";
    roomStateEl.textContent = state;
    roomStateEl.className = "room-state" + (conv.gone || conv.muted || (conv.kind === "room" && !conv.joined) ? " bad" : "");
    roomStateEl.hidden = !state;
    partButton.hidden = conv.key === LOBBY_KEY;
    partButton.textContent = conv.kind === "dm" || !conv.joined ? "Close" : "Leave";
  }

  function userItem(user, conv) {
    const item = document.createElement("li");
    const lower = user.toLowerCase();
    // The "@" and "+" come from the stylesheet (li.op, li.voiced), so the
    // item's text stays the name itself.
    if (conv.kind === "room" && conv.ops.has(lower)) {
      item.className = "op";
      item.title = user + " is an operator of " + conv.label;
    } else if (conv.kind === "room" && conv.voiced.has(lower)) {
      item.className = "voiced";
      item.title = user + " has voice in " + conv.label;
    }
    if (sameName(user, name)) {
      const me = document.createElement("span");
      me.className = "me nick";
      me.textContent = user;
      item.append(me);
      return item;
    }
    // Clicking someone opens (or shows) the direct conversation with them.
    const button = document.createElement("button");
    button.type = "button";
    button.className = "nick";
    button.textContent = user;
    button.title = "Message " + user + " directly";
    button.addEventListener("click", function () { switchTo(dmConv(user)); messageInput.focus(); });
    item.append(button);
    if (amOp(conv) && conv.key !== LOBBY_KEY) {
      // The member's menu: no text of its own (its "⋯" is the stylesheet's).
      const menu = document.createElement("button");
      menu.type = "button";
      menu.className = "member-actions";
      menu.setAttribute("aria-label", "Moderate " + user);
      menu.title = "Moderate " + user;
      menu.dataset.user = user;
      menu.addEventListener("click", function () { openMenu(conv, user); });
      item.append(menu);
    }
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
      users = conv.joined ? Array.from(conv.members.values()) : [];
    }
    usersEl.replaceChildren(...users.filter(Boolean).map((user) => userItem(user, conv)));
    renderMenu();
    renderRoomTools();
  }

  // The settings panel: the room's modes (ops change them) and invitations.
  function renderRoomTools() {
    const conv = currentConv();
    const shown = conv.kind === "room" && conv.joined && conv.key !== LOBBY_KEY;
    modesBox.hidden = !shown;
    if (!shown) return;
    const op = amOp(conv);
    modesEl.replaceChildren(...MODES.map(function ([flag, label]) {
      const row = document.createElement("label");
      row.className = "mode";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.flag = flag;
      box.checked = conv.modes[flag] === true;
      box.disabled = !op;
      box.addEventListener("change", function () {
        const wanted = box.checked;
        box.checked = conv.modes[flag] === true; // until the server's mode event says so
        const content = { room: conv.label };
        content[flag] = wanted;
        send("mode", content, { ref: "mod-mode|" + conv.key });
      });
      const text = document.createElement("span");
      text.textContent = label;
      row.append(box, text);
      return row;
    }));
  }

  function renderAccount() {
    accountEl.hidden = !(everLoggedIn && name);
    accountName.textContent = name || "";
    accountKind.textContent = isAccount ? "account" : "guest";
    accountKind.className = "account-kind " + (isAccount ? "is-account" : "is-guest");
    accountEl.title = isAccount ? "Logged in to the account " + name : "Chatting as a guest: the name is yours until you leave";
    passwordBox.hidden = !isAccount;
  }

  function renderLoginForm() {
    const on = accountsOn();
    passwordRow.hidden = !on;
    registerButton.hidden = !on;
  }

  function renderInvites() {
    invitesBox.hidden = invites.size === 0;
    invitesEl.replaceChildren(...Array.from(invites.values()).map(function (invite) {
      const item = document.createElement("li");
      item.dataset.room = invite.room.toLowerCase();
      const text = document.createElement("span");
      text.className = "invite-text";
      text.textContent = invite.room + " from " + invite.by;
      const join = document.createElement("button");
      join.type = "button";
      join.textContent = "Join";
      join.addEventListener("click", function () {
        if (!loggedIn) { chatError.textContent = "Not connected: try again once the status says connected."; return; }
        joinRoom(invite.room);
      });
      const drop = document.createElement("button");
      drop.type = "button";
      drop.className = "secondary";
      drop.textContent = "×";
      drop.setAttribute("aria-label", "Dismiss the invitation to " + invite.room);
      drop.addEventListener("click", function () { invites.delete(invite.room.toLowerCase()); renderInvites(); });
      item.append(text, join, drop);
      return item;
    }));
  }

  function showChat(visible) {
    const conv = convs.get(current);
    const wasHidden = chat.hidden;
    if (!visible && !wasHidden && conv) rememberScroll(conv);
    loginForm.hidden = visible;
    chat.hidden = !visible;
    if (visible && wasHidden && conv) restoreScroll(conv);
  }

  // ---- the member menu (room ops, §6.5) ---------------------------------

  function openMenu(conv, user) {
    menuTarget = { key: conv.key, user: user };
    menuComment.value = "";
    menuDuration.value = "";
    renderMenu();
  }

  function closeMenu() {
    menuTarget = null;
    menuEl.hidden = true;
  }

  function menuButton(action, label, conv, user) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.action = action;
    button.textContent = label;
    if (action === "kick" || action === "ban") button.className = "danger";
    button.addEventListener("click", function () {
      if (action === "message") {
        closeMenu();
        switchTo(dmConv(user));
        messageInput.focus();
        return;
      }
      if (!loggedIn) { chatError.textContent = "Not connected: try again once the status says connected."; return; }
      const seconds = Number(menuDuration.value);
      moderate(action, conv, user, menuComment.value.trim(), seconds > 0 ? seconds : null);
      if (action === "kick" || action === "ban") closeMenu();
    });
    return button;
  }

  // The menu follows the room: it closes when we stop being op there, or
  // the member leaves; its op and voice buttons say what a click does now.
  function renderMenu() {
    if (!menuTarget) { menuEl.hidden = true; return; }
    const conv = convs.get(menuTarget.key);
    const user = menuTarget.user, lower = user.toLowerCase();
    if (!conv || conv.key !== current || !amOp(conv) || !conv.members.has(lower)) {
      closeMenu();
      return;
    }
    menuTitle.textContent = user + " in " + conv.label;
    menuActions.replaceChildren(
      menuButton("message", "Message", conv, user),
      menuButton("kick", "Kick", conv, user),
      menuButton("ban", "Ban", conv, user),
      menuButton("mute", "Mute", conv, user),
      menuButton("unmute", "Unmute", conv, user),
      conv.ops.has(lower) ? menuButton("deop", "Remove op", conv, user) : menuButton("op", "Make op", conv, user),
      conv.voiced.has(lower) ? menuButton("devoice", "Remove voice", conv, user) : menuButton("voice", "Give voice", conv, user),
    );
    menuEl.hidden = false;
  }

  // ---- requests ---------------------------------------------------------

  function sendLogin() {
    setStatus("logging in"); // "connected" once the login is answered (an account's takes a moment)
    const extra = { ref: "login" };
    if (password !== null) extra.password = password;
    send("login", name, extra);
    // Requests are answered in order, a login's whole answer first (its
    // rooms and DMs come after the info, §6.4): this pong marks its end.
    if (password !== null) send("ping", {}, { ref: "loginend" });
  }

  function requestAfter(conv, after) {
    const content = { after: after, limit: RESUME_PAGE };
    if (conv.kind === "dm") content.with = conv.label;
    else if (conv.key !== LOBBY_KEY) content.room = conv.label; // #lobby's history names no room
    send("history", content, { ref: "resume|" + conv.key });
  }

  // After a reconnect: page #lobby from the last id seen. A guest's rooms
  // were forgotten by the server (or it was restarted): join every other
  // room again; each join's answer then asks for that room's gap
  // (onJoined). DMs between guests are never stored (§6.3): nothing to page.
  // An account's rooms come back with the login (onJoined "restore"), and
  // its DMs are stored: page each conversation from its last id.
  function resumeAll() {
    const home = lobby();
    if (home.lastId > 0) requestAfter(home, home.lastId);
    for (const conv of convs.values()) {
      if (isAccount) {
        if (conv.kind === "dm" && conv.lastId > 0) requestAfter(conv, conv.lastId);
      } else if (conv.kind === "room" && conv.key !== LOBBY_KEY && conv.joined) {
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

  // A §6.5 request about `user` in the room `conv`; its info (or error) comes back with the ref.
  function moderate(action, conv, user, comment, duration) {
    const content = { room: conv.label, user: user };
    if (comment && (action === "kick" || action === "ban")) content.comment = comment;
    if (duration && (action === "ban" || action === "mute")) content.duration = duration;
    send(action, content, { ref: "mod-" + action + "|" + conv.key });
  }

  // "/mode" shows the room's modes; "/mode +moderated -secret" sets them.
  function modeCommand(conv, arg) {
    if (!arg) {
      send("mode", { room: conv.label }, { ref: "modes|" + conv.key });
      return;
    }
    const content = { room: conv.label };
    for (const word of arg.split(/\s+/)) {
      const flag = word.slice(1);
      if (!/^[+-]/.test(word) || !MODES.some(([known]) => known === flag)) {
        chatError.textContent = "Use /mode +flag or -flag, flags: " + MODES.map(([known]) => known).join(", ") + ".";
        return;
      }
      content[flag] = word[0] === "+";
    }
    send("mode", content, { ref: "mod-mode|" + conv.key });
  }

  // "/kick name reason", "/ban name reason", "/mute name", "/op name", ...
  function moderationCommand(verb, arg) {
    const conv = currentConv();
    if (conv.kind !== "room") {
      chatError.textContent = "/" + verb + " works in a room.";
      return;
    }
    if (verb === "mode") {
      modeCommand(conv, arg);
      return;
    }
    const match = /^(\S+)(?:\s+([\s\S]*))?$/.exec(arg);
    if (!match) {
      chatError.textContent = "Usage: /" + verb + " name" + (verb === "kick" || verb === "ban" ? " [reason]" : "");
      return;
    }
    if (verb === "invite") send("invite", { room: conv.label, user: match[1] }, { ref: "mod-invite|" + conv.key });
    else moderate(verb, conv, match[1], (match[2] || "").trim(), null);
  }

  // Moderation requests whose success the room's events show (refs "mod-<request>").
  const EVENT_TELLS = new Set(["mod-op", "mod-deop", "mod-voice", "mod-devoice", "mod-mode", "mod-kick"]);

  const COMMAND = /^\/(topic|join|part|kick|ban|unban|mute|unmute|op|deop|voice|devoice|invite|mode)(?:\s+([\s\S]*))?$/i;

  // The few slash commands; any other text (even "/shrug") is sent as typed.
  function command(text) {
    const match = COMMAND.exec(text);
    if (!match) return false;
    const verb = match[1].toLowerCase(), arg = (match[2] || "").trim();
    if (verb === "topic") topicCommand(arg);
    else if (verb === "join") joinRoom(arg);
    else if (verb === "part") leaveCurrent();
    else moderationCommand(verb, arg);
    return true;
  }

  function sendText(text) {
    const conv = currentConv();
    let extra = {};
    if (conv.kind === "dm") extra = { to: conv.label };
    else if (!conv.joined) {
      chatError.textContent = "You are not in " + conv.label + ": join it again to talk there.";
      return;
    } else if (conv.key !== LOBBY_KEY) extra = { room: conv.label }; // #lobby: a plain v1 msg
    send("msg", text, extra);
  }

  // Room refresh: presence says who came but not whether they hold op or
  // voice (an account keeps both; the first to enter a room without ops
  // becomes op, §6.2). A join of a room we are in answers its info only,
  // with "ops" and "voiced" (§6.2): ask once the arrivals settle.
  function scheduleRefresh(conv) {
    if (conv.refreshTimer !== null) return;
    conv.refreshTimer = setTimeout(function () {
      conv.refreshTimer = null;
      if (loggedIn && conv.joined && convs.get(conv.key) === conv) send("join", conv.label, { ref: "refresh|" + conv.key });
    }, REFRESH_DELAY_MS);
  }

  function cancelRefresh(conv) {
    if (conv.refreshTimer !== null) clearTimeout(conv.refreshTimer);
    conv.refreshTimer = null;
  }

  // ---- responses --------------------------------------------------------

  function loginSucceeded() {
    loggedIn = true;
    replaying = everLoggedIn;
    everLoggedIn = true;
    isAccount = password !== null;
    restored = new Set();
    setStatus("connected");
    loginPassword.value = ""; // the page keeps no copy of it
    loginError.textContent = "";
    showChat(true);
    renderAccount();
    renderHeader();
    messageInput.focus();
    send("names", null, { ref: "names" });
    send("topic", { room: LOBBY }, { ref: "lobbytopic" });
    if (replaying) resumeAll();
  }

  function loginFailed(text) {
    if (socket) setStatus("connected");
    name = null;
    password = null;
    loginError.textContent = text;
    showChat(false);
    renderAccount();
    loginName.focus();
  }

  // Everything answering the login: its info, the #lobby history, and for
  // an account its rooms (info and history each) and its waiting DMs (§6.4).
  function onLogin(response) {
    const kind = response.response;
    const hasRoom = typeof response.room === "string";
    if (kind === "info" && !hasRoom) {
      loginSucceeded();
    } else if (kind === "info") {
      onJoined(response, "restore");
    } else if (kind === "error") {
      if (!loggedIn) loginFailed(String(response.content));
      // A second submit's login: the first one stands. Else a kept room
      // that could not be entered again (banned meanwhile, say).
      else if (response.code !== "already_logged_in") chatError.textContent = String(response.content);
    } else if (kind === "history") {
      const page = Array.isArray(response.content) ? response.content : [];
      if (typeof response.with === "string") {
        // DMs sent while we were away: news, counted unread.
        const conv = dmConv(response.with);
        addHistory(conv, page, true);
        pageOn(conv, response, page);
      } else {
        addHistory(hasRoom ? roomConv(response.room) : lobby(), page, replaying);
      }
    }
  }

  // The pong after an account's login: rooms the page had that the login
  // did not bring back are no longer ours (kicked or parted while away).
  function onLoginEnd() {
    if (!loggedIn || !isAccount || !replaying) return;
    for (const conv of convs.values()) {
      if (conv.kind !== "room" || conv.key === LOBBY_KEY || !conv.joined || restored.has(conv.key)) continue;
      conv.joined = false;
      conv.gone = "left";
      conv.members.clear();
      showNotice(conv, "You are no longer in " + conv.label + ".", "removed");
    }
    renderSidebar();
    renderHeader();
    renderUsers();
  }

  function addHistory(conv, page, counts) {
    for (const message of Array.isArray(page) ? page : []) {
      if (message && typeof message === "object") addMessage(conv, message, counts);
    }
  }

  // A page that says there is more (in the direction read, "after"): the next one.
  function pageOn(conv, response, page) {
    if (response.more !== true || !page.length) return;
    // Page on from this page's end, not from conv.lastId: the join
    // history may already have brought newer messages past a gap.
    const ids = page.map((m) => (m && typeof m.id === "number" ? m.id : 0));
    requestAfter(conv, Math.max(...ids));
  }

  function onHistory(response, tag) {
    const conv = historyConversation(response);
    const page = Array.isArray(response.content) ? response.content : [];
    // A first join's history is the room's past, not news; a rejoin's or a
    // resume page's is what we missed.
    addHistory(conv, page, tag === "rejoin" || tag === "resume");
    if (tag === "resume") pageOn(conv, response, page);
  }

  // A room's info with its members: our join ("join"), a guest's join
  // after a reconnect ("rejoin"), an account's room at login ("restore"),
  // a join by another session of our account ("elsewhere") or a refresh.
  function onJoined(response, tag) {
    const conv = roomConv(response.room);
    conv.label = response.room; // the creator's spelling (§6)
    conv.joined = true;
    conv.gone = "";
    setMembers(conv, response.members);
    setRoles(conv, response.ops, response.voiced);
    setModes(conv, response.modes);
    if (tag !== "refresh") setTopic(conv, response.topic);
    if (invites.delete(conv.key)) renderInvites();
    if (tag === "restore") restored.add(conv.key);
    if (tag === "join") switchTo(conv);
    else if ((tag === "rejoin" || (tag === "restore" && replaying)) && conv.lastId > 0) {
      requestAfter(conv, conv.lastId); // its history comes first, deduped
    }
    renderSidebar();
    if (conv.key === current) {
      renderHeader();
      renderUsers();
    }
  }

  // An info about us from someone else (§6.5): kicked or banned from a
  // room, muted or unmuted in one. Shown in the room and above the messages.
  function onModerated(response) {
    const text = String(response.content);
    const conv = response.room.toLowerCase() === LOBBY_KEY ? lobby() : roomConv(response.room);
    const removed = /^You were (kicked|banned) from /.exec(text);
    const muted = /^You were (muted|unmuted) in /.exec(text);
    if (removed && conv.key === LOBBY_KEY) {
      // The server closes the connection next: do not log in again by ourselves.
      stopped = text;
    } else if (removed) {
      conv.joined = false;
      conv.gone = removed[1];
      conv.members.clear();
      cancelRefresh(conv);
    } else if (muted) {
      conv.muted = muted[1] === "muted";
    }
    showNotice(conv, text, removed || muted ? "removed" : "");
    if (removed || muted) showAlert(text);
    renderSidebar();
    if (conv.key === current) {
      renderHeader();
      renderUsers();
    }
  }

  function onInfo(response, tag, detail) {
    const hasRoom = typeof response.room === "string";
    const text = String(response.content);
    if (tag === "names" && !hasRoom) {
      setMembers(lobby(), text.split(", "));
    } else if ((tag === "join" || tag === "rejoin" || tag === "refresh") && hasRoom) {
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
    } else if (tag === "register") {
      onRegistered();
    } else if (tag === "password") {
      password = pendingNewPassword; // a reconnect logs in with the new one
      pendingNewPassword = null;
      oldPassword.value = "";
      newPassword.value = "";
      passwordResult.textContent = text;
      passwordResult.className = "ok";
    } else if (EVENT_TELLS.has(tag)) {
      // Our op, voice, mode or kick request succeeded: the mode or presence
      // event that follows says so in the room, once.
    } else if (tag === "modes" && hasRoom && convs.has(response.room.toLowerCase())) {
      const conv = convs.get(response.room.toLowerCase());
      setModes(conv, response.modes);
      const on = MODES.filter(([flag]) => conv.modes[flag]).map(([flag]) => MODE_WORDS[flag]);
      showNotice(conv, "Modes of " + conv.label + ": " + (on.length ? on.join(", ") : "none"));
      if (conv.key === current) renderRoomTools();
    } else if (!tag && hasRoom && Array.isArray(response.members)) {
      onJoined(response, "elsewhere"); // another session of our account joined
    } else if (!tag && hasRoom && typeof response.by === "string") {
      onModerated(response);
    } else if (!tag && hasRoom && text === "Left " + response.room) {
      const conv = convs.get(response.room.toLowerCase()); // another session of ours parted
      if (conv) closeConversation(conv);
    } else if (text === "Server shutting down") {
      showNotice(currentConv(), "The server is shutting down; reconnecting when it is back.");
    } else if (hasRoom && convs.has(response.room.toLowerCase())) {
      showNotice(convs.get(response.room.toLowerCase()), text); // e.g. "Kicked bob from #Dev"
    } else if (!hasRoom && text) {
      showNotice(currentConv(), text);
    }
  }

  function onRegistered() {
    const registered = pendingRegister;
    pendingRegister = null;
    if (!registered || loggedIn) return;
    // Registering does not log in (§6.4): log in to the new account now.
    name = registered.username;
    password = registered.password;
    sendLogin();
  }

  function onError(response, tag, detail) {
    const text = String(response.content);
    if (tag === "lobbytopic" || tag === "refresh" || tag === "dmpast") return; // nothing to show
    if (tag === "register") {
      pendingRegister = null;
      loginError.textContent = text;
      return;
    }
    if (tag === "password") {
      pendingNewPassword = null;
      passwordResult.textContent = text;
      passwordResult.className = "error";
      return;
    }
    if (tag === "rejoin" || tag === "resume") {
      const conv = convs.get(detail);
      if (!conv) return;
      if (tag === "rejoin") {
        conv.joined = false;
        if (conv.key === current) renderHeader();
      }
      showNotice(conv, (tag === "rejoin" ? "Could not rejoin " : "Could not fetch what was missed in ") + conv.label + ": " + text);
      return;
    }
    chatError.textContent = text;
  }

  function onPresence(content) {
    if (!content || typeof content !== "object") return;
    const user = String(content.user), lower = user.toLowerCase();
    // Presence names its room (§5); a server before rooms sent only #lobby's.
    const conv = convs.get((typeof content.room === "string" ? content.room : LOBBY).toLowerCase());
    if (!conv) return;
    if (content.status === "online") {
      const opHere = Array.from(conv.members.keys()).some((member) => conv.ops.has(member));
      conv.members.set(lower, user);
      if (conv.key !== LOBBY_KEY && conv.joined && (!opHere || conv.ops.has(lower) || conv.voiced.has(lower))) {
        scheduleRefresh(conv);
      }
    } else {
      conv.members.delete(lower);
      const by = typeof content.by === "string" ? " by " + content.by : "";
      const why = typeof content.comment === "string" && content.comment ? ": " + content.comment : "";
      if (content.reason === "kicked" || content.reason === "banned") {
        showNotice(conv, user + " was " + content.reason + by + why, "moderation");
      }
      if (sameName(user, name) && conv.key !== LOBBY_KEY) {
        // Removed by someone else (kick, ban): no longer ours to rejoin.
        conv.joined = false;
        const how = content.reason ? " (" + content.reason + by + ")" : "";
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

  // A room's roles or modes changed (§6.5, §6.6).
  function onMode(content) {
    if (!content || typeof content !== "object" || typeof content.room !== "string") return;
    const conv = convs.get(content.room.toLowerCase());
    if (!conv) return;
    const by = typeof content.by === "string" ? content.by : "Someone";
    if (typeof content.user === "string") {
      const user = content.user, lower = user.toLowerCase();
      const who = sameName(user, name) ? "you" : user;
      if (typeof content.op === "boolean") {
        if (content.op) conv.ops.add(lower); else conv.ops.delete(lower);
        showNotice(conv, content.op ? by + " made " + who + " an operator" : by + " took operator status from " + who, "moderation");
      }
      if (typeof content.voice === "boolean") {
        if (content.voice) conv.voiced.add(lower); else conv.voiced.delete(lower);
        showNotice(conv, content.voice ? by + " gave voice to " + who : by + " took voice from " + who, "moderation");
      }
    } else if (content.modes && typeof content.modes === "object") {
      setModes(conv, content.modes);
      const changes = MODES.filter(([flag]) => typeof content.modes[flag] === "boolean")
        .map(([flag]) => MODE_WORDS[flag] + (content.modes[flag] ? " on" : " off"));
      if (changes.length) showNotice(conv, by + " set the room " + changes.join(", "), "moderation");
    }
    if (conv.key === current) {
      renderHeader();
      renderUsers();
    }
  }

  function onInvite(content) {
    if (!content || typeof content !== "object" || typeof content.room !== "string") return;
    const by = typeof content.by === "string" ? content.by : "Someone";
    invites.set(content.room.toLowerCase(), { room: content.room, by: by });
    renderInvites();
    showNotice(currentConv(), by + " invited you to " + content.room + " (see Invitations).", "moderation");
  }

  function handle(response) {
    const kind = response.response;
    const [tag, detail] = splitRef(response.ref);
    if (kind === "hello") {
      ready = true;
      const content = response.content && typeof response.content === "object" ? response.content : {};
      features = Array.isArray(content.features) ? content.features.filter((f) => typeof f === "string") : [];
      renderLoginForm();
      if (pendingRegister) {
        send("register", { username: pendingRegister.username, password: pendingRegister.password }, { ref: "register" });
      } else if (name && !loggedIn) {
        if (!accountsOn()) password = null; // a server without accounts ignores it anyway
        sendLogin();
      }
    } else if (kind === "pong") {
      if (tag === "loginend") onLoginEnd();
    } else if (tag === "login") {
      onLogin(response);
    } else if (kind === "message") {
      const conv = conversationOf(response);
      addMessage(conv, response, true);
      if (conv.muted && conv.kind === "room" && sameName(response.sender, name)) {
        conv.muted = false; // our own message went through: the mute has ended
        renderSidebar();
        if (conv.key === current) renderHeader();
      }
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
    } else if (kind === "mode") {
      onMode(response.content);
    } else if (kind === "invite") {
      onInvite(response.content);
    }
  }

  // ---- connection -------------------------------------------------------

  function connect() {
    stopped = null;
    setStatus(wasConnected ? "reconnecting" : "connecting");
    socket = new WebSocket(socketUrl());
    socket.onopen = function () {
      backoff = 500;
      wasConnected = true;
      loggedIn = false;
      ready = false;
      setStatus(name ? "logging in" : "connected"); // a reconnect logs in again at once
      send("hello", { protocol: 2, client: "chatd-web/0.3" });
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
      if (stopped !== null) {
        // Kicked or banned from #lobby: back to the login form, and a new
        // login (the person's choice) connects again.
        setStatus("disconnected");
        loginFailed(stopped);
        return;
      }
      setStatus(wasConnected ? "disconnected" : "disconnected (server unreachable)");
      const delay = backoff;
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
      setTimeout(connect, delay);
      setTimeout(function () { if (!socket || socket.readyState !== WebSocket.OPEN) setStatus("reconnecting"); }, Math.min(delay, 1000));
    };
  }

  // Send now if the connection is ready; else the hello handler does, and
  // a connection that was given up (removed from #lobby) is opened again.
  function whenReady(action) {
    if (ready) action();
    else if (!socket) connect();
  }

  // ---- forms ------------------------------------------------------------

  loginForm.addEventListener("submit", function (event) {
    event.preventDefault();
    loginError.textContent = "";
    const wanted = loginName.value.trim();
    const secret = accountsOn() ? loginPassword.value : "";
    if (secret && !ACCOUNT_RULE.test(wanted)) {
      loginError.textContent = "An account name is 1 to 32 letters, digits, _ or -, starting with a letter or _.";
      return;
    }
    if (!secret && !NAME_RULE.test(wanted)) {
      loginError.textContent = "Use 1 to 32 letters or digits.";
      return;
    }
    if (loggedIn) return;
    name = wanted;
    password = secret || null;
    whenReady(sendLogin);
  });

  registerButton.addEventListener("click", function () {
    loginError.textContent = "";
    const wanted = loginName.value.trim();
    const secret = loginPassword.value;
    if (!ACCOUNT_RULE.test(wanted)) {
      loginError.textContent = "An account name is 1 to 32 letters, digits, _ or -, starting with a letter or _.";
      return;
    }
    if (!secret) {
      loginError.textContent = "Choose a password for the account.";
      loginPassword.focus();
      return;
    }
    if (loggedIn || pendingRegister) return;
    pendingRegister = { username: wanted, password: secret };
    whenReady(function () {
      send("register", { username: wanted, password: secret }, { ref: "register" });
    });
  });

  passwordForm.addEventListener("submit", function (event) {
    event.preventDefault();
    passwordResult.className = "error";
    if (!oldPassword.value || !newPassword.value) {
      passwordResult.textContent = "Type the current password and a new one.";
      return;
    }
    if (!loggedIn) {
      passwordResult.textContent = "Not connected: try again once the status says connected.";
      return;
    }
    passwordResult.textContent = "";
    pendingNewPassword = newPassword.value;
    send("password", { old: oldPassword.value, new: newPassword.value }, { ref: "password" });
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

  inviteForm.addEventListener("submit", function (event) {
    event.preventDefault();
    const conv = currentConv();
    const wanted = inviteName.value.trim();
    if (!wanted || conv.kind !== "room") return;
    if (!loggedIn) {
      chatError.textContent = "Not connected: try again once the status says connected.";
      return;
    }
    send("invite", { room: conv.label, user: wanted }, { ref: "mod-invite|" + conv.key });
    inviteName.value = "";
  });

  partButton.addEventListener("click", function () {
    const conv = currentConv();
    if (loggedIn || conv.kind === "dm" || !conv.joined) leaveCurrent();
    else chatError.textContent = "Not connected: try again once the status says connected.";
  });

  alertClose.addEventListener("click", function () { alertEl.hidden = true; });
  menuClose.addEventListener("click", closeMenu);
  menuEl.addEventListener("keydown", function (event) { if (event.key === "Escape") closeMenu(); });

  switchTo(lobby());
  connect();
})();
