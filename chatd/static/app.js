// chatd browser client: plain JavaScript, same origin only.
// Speaks protocol 2 over /ws: hello, login, history paging to resume
// after a reconnect, presence for the live user list. Everything the
// server sends is shown with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const statusEl = $("status"), loginForm = $("login-form"), loginName = $("login-name");
  const loginError = $("login-error"), chat = $("chat"), messagesEl = $("messages");
  const sendForm = $("send-form"), messageInput = $("message"), chatError = $("chat-error");
  const usersEl = $("users");

  const MAX_BACKOFF_MS = 5000; // capped: back within seconds of the server's return
  let socket = null;
  let name = null;          // logged in (or logging in) as
  let loggedIn = false;
  let lastId = 0;           // newest message id shown: anything not newer is a repeat
  let resuming = false;     // paging what we missed after a reconnect
  let resumeBuffer = [];    // live messages that arrive meanwhile
  let backoff = 500;
  let wasConnected = false;
  const users = new Map();  // lower-cased name -> name, in arrival order

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

  function hhmm(timestamp) {
    const when = new Date(timestamp);
    if (isNaN(when.getTime())) return "--:--";
    return String(when.getHours()).padStart(2, "0") + ":" + String(when.getMinutes()).padStart(2, "0");
  }

  function scrolledToBottom() {
    return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 40;
  }

  function showMessage(message) {
    if (typeof message.id === "number") {
      if (message.id <= lastId) return; // shown already
      lastId = message.id;
    }
    const stick = scrolledToBottom();
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
    messagesEl.append(item);
    if (stick) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function showNotice(text) {
    const item = document.createElement("li");
    item.className = "notice";
    item.textContent = text;
    messagesEl.append(item);
    messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function renderUsers() {
    usersEl.replaceChildren();
    for (const user of users.values()) {
      const item = document.createElement("li");
      item.textContent = user;
      usersEl.append(item);
    }
  }

  function setUsers(list) {
    users.clear();
    for (const user of list) if (user) users.set(user.toLowerCase(), user);
    renderUsers();
  }

  function requestMissed() {
    send("history", { after: lastId, limit: 500 }, { ref: "resume" });
  }

  function handle(response) {
    const kind = response.response;
    const ref = response.ref;
    if (kind === "hello") {
      if (name) send("login", name, { ref: "login" });
      return;
    }
    if (ref === "login") {
      if (kind === "info") {
        loggedIn = true;
        loginForm.hidden = true;
        chat.hidden = false;
        messageInput.focus();
        send("names", null, { ref: "names" });
        if (lastId > 0) { resuming = true; resumeBuffer = []; requestMissed(); }
      } else if (kind === "error") {
        name = null;
        loginError.textContent = String(response.content);
        loginForm.hidden = false;
        chat.hidden = true;
        loginName.focus();
      } else if (kind === "history" && !resuming) {
        for (const message of response.content || []) showMessage(message);
      }
      return;
    }
    if (ref === "resume") {
      if (kind === "history") {
        for (const message of response.content || []) showMessage(message);
        if (response.more && (response.content || []).length) { requestMissed(); return; }
      }
      resuming = false;
      for (const message of resumeBuffer) showMessage(message);
      resumeBuffer = [];
      return;
    }
    if (ref === "names" && kind === "info") {
      setUsers(String(response.content).split(", "));
      return;
    }
    if (kind === "message") {
      if (resuming) resumeBuffer.push(response); else showMessage(response);
    } else if (kind === "presence") {
      const user = String(response.content.user);
      if (response.content.status === "online") users.set(user.toLowerCase(), user);
      else users.delete(user.toLowerCase());
      renderUsers();
    } else if (kind === "error") {
      chatError.textContent = String(response.content);
    } else if (kind === "info" && response.content === "Server shutting down") {
      showNotice("The server is shutting down; reconnecting when it is back.");
    }
  }

  function connect() {
    setStatus(wasConnected ? "reconnecting" : "connecting");
    socket = new WebSocket(socketUrl());
    socket.onopen = function () {
      backoff = 500;
      wasConnected = true;
      loggedIn = false;
      setStatus("connected");
      send("hello", { protocol: 2, client: "chatd-web/0.1" });
    };
    socket.onmessage = function (event) {
      let response;
      try { response = JSON.parse(event.data); } catch (e) { return; }
      if (response && typeof response === "object") handle(response);
    };
    socket.onclose = function () {
      socket = null;
      loggedIn = false;
      setStatus(wasConnected ? "disconnected" : "disconnected (server unreachable)");
      const delay = backoff;
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
      setTimeout(connect, delay);
      setTimeout(function () { if (!socket || socket.readyState !== WebSocket.OPEN) setStatus("reconnecting"); }, Math.min(delay, 1000));
    };
  }

  loginForm.addEventListener("submit", function (event) {
    event.preventDefault();
    loginError.textContent = "";
    const wanted = loginName.value.trim();
    if (!/^[A-Za-z0-9]{1,32}$/.test(wanted)) {
      loginError.textContent = "Use 1 to 32 letters or digits.";
      return;
    }
    name = wanted;
    send("login", name, { ref: "login" });
  });

  sendForm.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = messageInput.value;
    if (!text.trim() || !loggedIn) return;
    chatError.textContent = "";
    send("msg", text);
    messageInput.value = "";
  });

  connect();
})();
