// tcpchat in the browser: the chat protocol's JSON frames, one per WebSocket message.
// Every text from the server is put in the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const BACKOFF_FIRST = 500;   // ms before the first reconnect; doubled up to BACKOFF_MOST
const BACKOFF_MOST = 30000;
const RESTART_DELAY = 300;   // the daemon asked us to come back (an upgrade): soon
const TAKEN_RETRY = 1000;    // our nickname is still held by the connection that was lost

const state = {
  ws: null, me: "", account: "", password: "", everJoined: false, joined: false,
  stopped: false, features: [], defaultRoom: "", current: "", rooms: new Map(),
  receipts: new Map(), outbox: [], delay: BACKOFF_FIRST, timer: null, requestId: 0,
  asked: new Map(),
};

function uuid4() {  // crypto.randomUUID needs a secure context; this does not
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- rooms and what the page shows of them

function room(name) {
  const key = name || state.defaultRoom;
  let r = state.rooms.get(key);
  if (!r) {
    r = { name: key, topic: "", members: new Set(), lines: [], unread: 0, oldest: null,
          more: false };
    state.rooms.set(key, r);
    if (!state.current) state.current = key;
    drawRooms();
  }
  return r;
}

function drawRooms() {
  const nav = $("rooms");
  nav.replaceChildren();
  for (const r of state.rooms.values()) {
    const tab = el("button", r.name === state.current ? "current" : "", r.name ? `#${r.name}` : "chat");
    tab.type = "button";
    tab.dataset.room = r.name;
    if (r.unread) tab.append(el("span", "unread", String(r.unread)));
    tab.addEventListener("click", () => show(r.name));
    nav.append(tab);
  }
  drawStatus();
}

function show(name) {
  state.current = name;
  const r = room(name);
  r.unread = 0;
  const log = $("log");
  const older = $("older");
  log.replaceChildren(older);
  for (const line of r.lines) log.append(line);
  older.hidden = !(r.more && state.features.includes("scrollback"));
  $("topic").textContent = r.topic;
  drawMembers();
  drawRooms();
  log.scrollTop = log.scrollHeight;
}

function drawMembers() {
  const list = $("member-list");
  list.replaceChildren();
  const r = state.rooms.get(state.current);
  if (!r) return;
  for (const nick of [...r.members].sort((a, b) => a.localeCompare(b))) {
    const item = el("li", nick === state.me ? "me" : "");
    item.append(el("bdi", "", nick));
    list.append(item);
  }
}

function drawStatus(text) {
  const status = $("status");
  if (text !== undefined) {
    status.textContent = text;
    status.classList.toggle("lost", !state.joined);
    return;
  }
  if (state.joined) {
    const r = state.current ? `#${state.current} · ` : "";
    status.textContent = `${r}${state.me}`;
    status.classList.remove("lost");
  }
}

const MENTION_EDGE = "[^\\p{L}\\p{N}_]";
function mentions(text) {
  if (!state.me) return false;
  const nick = state.me.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(^|${MENTION_EDGE})${nick}($|${MENTION_EDGE})`, "iu").test(text);
}

function clock(iso) {
  const when = iso ? new Date(iso) : new Date();
  return Number.isNaN(when.getTime()) ? "" : when.toTimeString().slice(0, 5);
}

// One line of the log: time, who (isolated: a right-to-left name cannot reorder the
// line), what; all as text.
function line(roomName, { nick = "", text = "", time = "", cls = "", uuid = "" }, where = "end") {
  const r = room(roomName);
  const node = el("div", `line ${cls}`.trim());
  if (uuid) node.dataset.uuid = uuid;
  node.append(el("time", "", clock(time)));
  if (nick) node.append(el("bdi", "nick", nick));
  const body = el("bdi", "text", text);
  body.dir = "auto";
  node.append(body);
  if (where === "start") r.lines.unshift(node); else r.lines.push(node);
  if (r.name === state.current) {
    const log = $("log");
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    if (where === "start") $("older").after(node); else log.append(node);
    if (atEnd && where !== "start") log.scrollTop = log.scrollHeight;
  } else if (where === "end" && !cls.includes("notice") && !cls.includes("history")) {
    r.unread += 1;
    drawRooms();
  }
  return node;
}

function notice(roomName, text, time) {
  return line(roomName, { text, time, cls: "notice" });
}

// --- the connection

function connect() {
  clearTimeout(state.timer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/chat`);
  state.ws = ws;
  drawStatus("connecting…");
  ws.addEventListener("message", (event) => {
    if (ws !== state.ws) return;
    if (event.data === "_nickname_") { hello(); return; }
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    receive(frame);
  });
  ws.addEventListener("close", () => { if (ws === state.ws) lost(); });
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN && state.joined) {
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function hello() {
  const frame = { type: "hello", mode: "chat" };
  if (state.me) frame.nickname = state.me;
  if (state.account) { frame.account = state.account; frame.password = state.password; }
  if (state.current && state.features.includes("rooms")) frame.room = state.current;
  state.ws.send(JSON.stringify(frame));
}

function lost() {
  state.joined = false;
  state.ws = null;
  if (state.stopped) return;
  if (!state.everJoined) {  // never in: the login form says why
    showLogin($("login-error").textContent || "The server closed the connection.");
    return;
  }
  const delay = state.delay;
  state.delay = Math.min(state.delay * 2, BACKOFF_MOST);
  drawStatus(`disconnected: reconnecting in ${Math.round(delay / 100) / 10} s`);
  state.timer = setTimeout(connect, delay);
}

function joined() {
  state.joined = true;
  state.everJoined = true;
  state.delay = BACKOFF_FIRST;
  drawStatus();
  const rejoin = [...state.rooms.keys()].filter((name) => name && name !== state.current
    && state.features.includes("rooms"));
  for (const name of rejoin) request({ cmd: "join", room: name });
  const queued = state.outbox.splice(0);
  for (const { frame, node } of queued) {  // what was typed while the connection was down
    send(frame);
    const mark = node.querySelector(".receipt");
    if (mark) mark.textContent = "…";
  }
}

// What arrives together is confirmed together: one frame with every uuid (the `confirms`
// feature), CONFIRM_BATCH ms after the first, instead of a frame per message.
const CONFIRM_BATCH = 20;
let unconfirmed = [];
function confirmLater(uuid) {
  unconfirmed.push(uuid);
  if (unconfirmed.length === 1) setTimeout(confirmNow, CONFIRM_BATCH);
}
function confirmNow() {
  const uuids = unconfirmed;
  unconfirmed = [];
  if (!uuids.length || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const frame = uuids.length === 1 ? { type: "confirm", uuid: uuids[0] }
    : { type: "confirm", uuids };
  state.ws.send(JSON.stringify(frame));
}

function request(fields) {
  state.requestId += 1;
  const frame = { type: "request", id: state.requestId, ...fields };
  state.asked.set(state.requestId, fields.cmd);
  return send(frame);
}

// --- frames from the server

function receive(f) {
  if (f.type === "message") {
    if (f.uuid) confirmLater(f.uuid);
    const prefix = f.private ? `${f.nickname} (private): ` : `${f.nickname}: `;
    let text = String(f.message || "");
    if (text.startsWith(prefix)) text = text.slice(prefix.length);
    let cls = f.private ? "private" : "";
    if (f.action) cls += " action";
    if (mentions(text)) cls += " mention";
    const where = f.private ? state.current : f.room;
    line(where, { nick: f.action ? `* ${f.nickname}` : f.nickname, text, time: f.time,
                  cls, uuid: f.uuid });
    return;
  }
  if (f.type === "confirm") {
    const mark = state.receipts.get(f.uuid);
    if (mark) {
      mark.className = "receipt";
      mark.textContent = `✓ ${f.delivered}/${f.recipients}`;
      state.receipts.delete(f.uuid);
    }
    return;
  }
  if (f.type !== "system") return;
  const asked = f.id !== undefined ? state.asked.get(f.id) : undefined;
  if (f.id !== undefined) state.asked.delete(f.id);
  switch (f.event) {
    case "join":
      if (f.nickname === state.me || (!state.joined && !state.me)) {
        if (!state.me) state.me = f.nickname;
        room(f.room);
        if (!state.joined) { enterChat(); joined(); }
      }
      room(f.room).members.add(f.nickname);
      if (f.nickname !== state.me) notice(f.room, f.message, f.time);
      if ((f.room || state.defaultRoom) === state.current) drawMembers();
      break;
    case "names": {
      state.features = f.features || [];
      if (state.defaultRoom === "" && f.room && state.rooms.size === 0) state.defaultRoom = f.room;
      const r = room(f.room);
      r.members = new Set(f.nicknames || []);
      if (f.topic !== undefined) r.topic = f.topic;
      if (asked) notice(f.room, f.message);
      if (asked === "join") show(r.name);
      else if (r.name === state.current) { $("topic").textContent = r.topic; drawMembers(); }
      break;
    }
    case "history": {
      const r = room(f.room);
      const messages = f.messages || [];
      if (asked === "history") {
        r.more = Boolean(f.more);
        for (const m of [...messages].reverse()) pastLine(r, m, "start");
      } else {
        const shown = new Set(r.lines.map((n) => n.dataset.uuid).filter(Boolean));
        for (const m of messages) if (!m.uuid || !shown.has(m.uuid)) pastLine(r, m, "end");
        r.more = messages.length > 0;
      }
      if (messages.length && messages[0].uuid && (asked === "history" || !r.oldest)) {
        r.oldest = messages[0].uuid;
      }
      if (r.name === state.current) $("older").hidden = !(r.more && state.features.includes("scrollback"));
      break;
    }
    case "leave":
      if (f.nickname === state.me && asked === "part") {
        state.rooms.delete(f.room);
        show(state.rooms.keys().next().value || "");
        break;
      }
      room(f.room).members.delete(f.nickname);
      notice(f.room, f.message, f.time);
      if ((f.room || state.defaultRoom) === state.current) drawMembers();
      break;
    case "nick":
      for (const r of state.rooms.values()) {
        if (r.members.delete(f.old)) r.members.add(f.nickname);
      }
      if (f.old === state.me) state.me = f.nickname;
      notice(f.room || state.current, f.message, f.time);
      drawMembers();
      drawStatus();
      break;
    case "topic": {
      const r = room(f.room);
      r.topic = f.topic || "";
      notice(f.room, f.message, f.time);
      if (r.name === state.current) $("topic").textContent = r.topic;
      break;
    }
    case "kick":
      if (f.room && !f.banned) {
        state.rooms.delete(f.room);
        show(state.rooms.keys().next().value || "");
        notice(state.current, f.message, f.time);
        break;
      }
      state.stopped = true;  // out of the daemon: no reconnect until the page is reloaded
      notice(state.current, f.message, f.time);
      drawStatus(f.banned ? "banned" : "kicked: reload the page to come back");
      break;
    case "undelivered": {
      const mark = state.receipts.get(f.uuid);
      if (mark) { mark.className = "receipt undelivered"; mark.textContent = "✗ not delivered"; }
      state.receipts.delete(f.uuid);
      break;
    }
    case "restart":
      notice(state.current, f.message, f.time);
      state.delay = RESTART_DELAY;
      break;
    case "error":
      if (!state.joined) {
        if (state.everJoined && f.code === "nickname_taken") {
          state.delay = TAKEN_RETRY;  // our lost connection still holds it: try again
          break;
        }
        if (!state.everJoined) {
          state.stopped = true;
          showLogin(f.message);
          if (state.ws) state.ws.close();
          break;
        }
      }
      line(state.current, { text: f.message, cls: "error" });
      break;
    default:  // announce, shutdown, login, done, rooms, search, accepted...
      if (f.event === "search") {
        for (const m of f.messages || []) pastLine(room(f.room), m, "end");
      }
      if (f.message) notice(f.room || state.current, f.message, f.time);
  }
}

function pastLine(r, m, where) {
  const prefix = `${m.nickname}: `;
  let text = String(m.message || "");
  if (text.startsWith(prefix)) text = text.slice(prefix.length);
  line(r.name, { nick: m.nickname, text, time: m.time, cls: "history", uuid: m.uuid || "" }, where);
}

// --- what the user types

const HELP = "/me ACTION · /msg NICK TEXT · /nick NEW · /join ROOM · /part · /topic [TEXT] · " +
  "/rooms · /who · /search WORDS · /kick NICK [REASON] · /ban TARGET [REASON] · /unban TARGET";

function submit(text) {
  if (!text.trim()) return true;
  if (text.startsWith("/") && !text.startsWith("//")) return command(text);
  say({ message: text.startsWith("//") ? text.slice(1) : text });
  return true;
}

function say(fields) {
  const frame = { type: "message", uuid: uuid4(), ...fields };
  if (!fields.to && state.current && state.features.includes("rooms")) frame.room = state.current;
  const text = fields.message;
  const cls = `own${fields.to ? " private" : ""}${fields.action ? " action" : ""}`;
  const nick = fields.action ? `* ${state.me}` : fields.to ? `${state.me} → ${fields.to}` : state.me;
  const node = line(state.current, { nick, text, cls, uuid: frame.uuid });
  const mark = el("span", "receipt pending", "…");
  node.append(mark);
  state.receipts.set(frame.uuid, mark);
  if (!send(frame)) {
    mark.textContent = "queued";
    state.outbox.push({ frame, node });
  }
}

function command(text) {
  const [word, ...rest] = text.slice(1).split(" ");
  const arg = rest.join(" ").trim();
  switch (word.toLowerCase()) {
    case "me": say({ message: arg, action: true }); break;
    case "msg": {
      const [to, ...words] = arg.split(" ");
      if (!to || !words.length) { notice(state.current, "usage: /msg NICK TEXT"); break; }
      say({ message: words.join(" "), to });
      break;
    }
    case "nick": request({ cmd: "nick", nickname: arg }); break;
    case "join": request({ cmd: "join", room: arg }); break;
    case "part": request({ cmd: "part", room: arg || state.current }); break;
    case "topic": request(arg ? { cmd: "topic", room: state.current, topic: arg }
      : { cmd: "topic", room: state.current }); break;
    case "rooms": request({ cmd: "rooms" }); break;
    case "who": request({ cmd: "who", room: state.current }); break;
    case "search": request({ cmd: "search", room: state.current, words: arg }); break;
    case "kick": case "ban": case "unban": {  // a moderator's (the server says if not)
      const [target, ...why] = arg.split(" ");
      if (!target) { notice(state.current, `usage: /${word} ${word === "kick" ? "NICK" : "TARGET"} [REASON]`); break; }
      const fields = word === "kick" ? { nickname: target } : { target };
      if (why.length && word !== "unban") fields.reason = why.join(" ");
      request({ cmd: word.toLowerCase(), ...fields });
      break;
    }
    case "help": notice(state.current, HELP); break;
    default: notice(state.current, `unknown command /${word}: ${HELP}`);
  }
  return true;
}

// --- the page

function showLogin(error) {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error || "";
  $("enter").disabled = false;
}

function enterChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
  show(state.current);
  $("input").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  state.me = $("nickname").value.trim();
  state.account = $("account").value.trim();
  state.password = $("password").value;
  if (!state.me && !state.account) { $("login-error").textContent = "Choose a nickname."; return; }
  $("login-error").textContent = "";
  $("enter").disabled = true;
  state.stopped = false;
  connect();
});

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("input");
  if (submit(input.value)) input.value = "";
});

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("say").requestSubmit();
  }
});

$("older").addEventListener("click", () => {
  const r = state.rooms.get(state.current);
  if (r && r.oldest) request({ cmd: "history", room: r.name || undefined, before: r.oldest });
});

$("toggle-members").addEventListener("click", () => $("members").classList.toggle("open"));

$("nickname").focus();
