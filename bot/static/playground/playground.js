/* Bot playground: chat with the bot through the built-in CometChat emulator.
 *
 * Plain JS, no build step, no framework. Talks to the JSON API under /playground/api (bot/playground.py):
 * state (users, groups, the bot's group setting), messages (send as a user), uploads, and a long poll for
 * every message that changed. Interactive messages (forms, cards) call their buttons' apiAction URLs the way
 * CometChat's v4 web UI kit does (PLATFORM.md 5.4).
 *
 * Security: message content only ever reaches the DOM as text (textContent, text nodes) or as attributes;
 * never through innerHTML. URLs in src/href are limited to http(s) (same-origin URLs resolve to http(s) too).
 */
"use strict";

(() => {
  const API = "/playground/api";
  const POLL_WAIT = 20; // seconds a long poll may wait on the server
  const APP_ID = "local";
  const REGION = "eu";
  const STORAGE = "cometchat-bot.playground.";

  const S = {
    bot: { uid: "bot", name: "Bot", role: "bot" },
    users: [],
    groups: [],
    setting: "allMessages",
    stateKey: "",
    namesKey: "", // who is called what: message nodes are rebuilt when it changes
    stateVersion: 0, // version of the newest snapshot applied (an older one arriving late is ignored)
    me: "",
    openId: "", // conversationId of the open conversation
    thread: null, // id of the message whose thread is open
    messages: new Map(), // id -> message (full objects, merged by id)
    version: 0,
    loaded: false, // the first poll answered
    seen: new Map(), // conversationId -> highest message id seen
    localDone: new Map(), // "uid|messageId" -> Set of element ids done in this page
    pending: new Set(), // "messageId|elementId" while an apiAction runs
    ierrors: new Map(), // "uid|messageId" -> {text, code}
    invalid: new Map(), // "uid|messageId" -> Set of element ids failing validation
    formValues: new Map(), // "uid|messageId" -> {elementId: value}
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ small helpers

  /** Build an element. Content is always text; never HTML. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "testid") el.dataset.testid = value;
      else if (key === "data") {
        for (const [k, v] of Object.entries(value)) if (v !== undefined && v !== null) el.dataset[k] = String(v);
      } else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (typeof value === "boolean" || key === "value") el[key] = value;
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** An http(s) URL (relative ones resolve against this page), or null. */
  function safeUrl(raw) {
    if (typeof raw !== "string" || !raw.trim()) return null;
    let url;
    try {
      url = new URL(raw.trim(), window.location.href);
    } catch {
      return null;
    }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const byId = (a, b) => Number(a.id) - Number(b.id) || String(a.id).localeCompare(String(b.id));
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  const timeZone = () => {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    } catch {
      return "UTC";
    }
  };
  const store = {
    get: (k) => {
      try {
        return window.localStorage.getItem(STORAGE + k);
      } catch {
        return null;
      }
    },
    set: (k, v) => {
      try {
        window.localStorage.setItem(STORAGE + k, v);
      } catch {
        /* private mode: not remembered */
      }
    },
  };

  function conversationIdOf(a, b) {
    return [a, b].sort().join("_user_");
  }

  function nameOf(uid) {
    if (!uid) return "";
    if (uid === S.bot.uid) return S.bot.name;
    const user = S.users.find((u) => u.uid === uid);
    return user ? user.name : uid;
  }

  function isBotUid(uid) {
    return uid === S.bot.uid;
  }

  function initials(name) {
    const words = String(name).match(/[\p{L}\p{N}]+/gu) || [];
    const letters = words.length > 1 ? words[0][0] + words[1][0] : words.length ? words[0][0] : "?";
    return letters.toUpperCase();
  }

  /** Line icons (24×24, stroked) built as SVG elements: no icon font, no emoji font needed. */
  const ICONS = {
    bot: [["rect", { x: 4, y: 8, width: 16, height: 12, rx: 3 }], ["path", { d: "M12 8V4.5M2 13v3M22 13v3" }],
      ["circle", { cx: 12, cy: 3.5, r: 1 }], ["circle", { cx: 9, cy: 14, r: 1.3, fill: "currentColor" }],
      ["circle", { cx: 15, cy: 14, r: 1.3, fill: "currentColor" }]],
    clip: [["path", { d: "M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5" }]],
    link: [["path", { d: "M10 13a5 5 0 0 0 7.5.5l3-3a5 5 0 0 0-7-7l-1.7 1.7" }],
      ["path", { d: "M14 11a5 5 0 0 0-7.5-.5l-3 3a5 5 0 0 0 7 7l1.7-1.7" }]],
    braces: [["path", { d: "M8 3H7a2 2 0 0 0-2 2v5a2 2 0 0 1-2 2 2 2 0 0 1 2 2v5a2 2 0 0 0 2 2h1" }],
      ["path", { d: "M16 21h1a2 2 0 0 0 2-2v-5a2 2 0 0 1 2-2 2 2 0 0 1-2-2V5a2 2 0 0 0-2-2h-1" }]],
    eye: [["path", { d: "M1 12s4-8 11-8 11 8 11 8-4 8-11 8-11-8-11-8z" }], ["circle", { cx: 12, cy: 12, r: 3 }]],
    thread: [["path", { d: "M21 11.5a8.4 8.4 0 0 1-9 8.5 8.4 8.4 0 0 1-3.8-.9L3 21l1.9-5.7A8.4 8.4 0 0 1 4 11.5 8.5 8.5 0 0 1 12.5 3 8.5 8.5 0 0 1 21 11.5z" }]],
    file: [["path", { d: "M13 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V9z" }], ["path", { d: "M13 2v7h7" }]],
    image: [["rect", { x: 3, y: 3, width: 18, height: 18, rx: 2 }], ["circle", { cx: 8.5, cy: 8.5, r: 1.5 }],
      ["path", { d: "M21 15l-5-5L5 21" }]],
    video: [["rect", { x: 1, y: 5, width: 15, height: 14, rx: 2 }], ["path", { d: "M23 7l-7 5 7 5z" }]],
    audio: [["path", { d: "M9 18V5l12-2v13" }], ["circle", { cx: 6, cy: 18, r: 3 }], ["circle", { cx: 18, cy: 16, r: 3 }]],
  };

  function icon(name, className) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    const attrs = { viewBox: "0 0 24 24", width: 18, height: 18, fill: "none", stroke: "currentColor",
      "stroke-width": 2, "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true",
      class: `svg-icon${className ? ` ${className}` : ""}` };
    for (const [k, v] of Object.entries(attrs)) svg.setAttribute(k, String(v));
    for (const [tag, shapeAttrs] of ICONS[name] || []) {
      const shape = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(shapeAttrs)) shape.setAttribute(k, String(v));
      svg.append(shape);
    }
    return svg;
  }

  function colorFor(uid) {
    let hash = 0;
    for (const ch of String(uid)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${hash % 360}, 45%, 52%)`;
  }

  function humanSize(size) {
    const n = Number(size);
    if (!Number.isFinite(n) || n < 0) return "";
    if (n < 1024) return `${n} bytes`;
    const units = ["KB", "MB", "GB"];
    let value = n / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(1)} ${units[unit]}`;
  }

  function formatTime(seconds) {
    const date = new Date(Number(seconds) * 1000);
    if (Number.isNaN(date.getTime())) return { short: "", long: "" };
    return {
      short: date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
      long: date.toLocaleString(),
    };
  }

  const MIME_BY_EXTENSION = {
    png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp",
    svg: "image/svg+xml", bmp: "image/bmp", avif: "image/avif",
    mp4: "video/mp4", webm: "video/webm", mov: "video/quicktime", mkv: "video/x-matroska",
    mp3: "audio/mpeg", wav: "audio/wav", ogg: "audio/ogg", m4a: "audio/mp4", flac: "audio/flac", aac: "audio/aac",
    pdf: "application/pdf", txt: "text/plain", csv: "text/csv", json: "application/json", zip: "application/zip",
  };

  /** The message type CometChat uses for a MIME type. */
  function typeForMime(mime) {
    const major = String(mime || "").split("/")[0].toLowerCase();
    return ["image", "video", "audio"].includes(major) ? major : "file";
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, body) {
      const error = isObject(body) && isObject(body.error) ? body.error : {};
      super(typeof error.message === "string" && error.message ? error.message : `HTTP ${status}`);
      this.status = status;
      this.code = typeof error.code === "string" ? error.code : "";
    }
  }

  async function api(method, path, body) {
    const options = { method, headers: {}, cache: "no-store" };
    if (body instanceof FormData) options.body = body;
    else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, options);
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function describeError(error) {
    if (error instanceof ApiError) return error.code ? `${error.message} (${error.code})` : error.message;
    return `Could not reach the playground: ${error && error.message ? error.message : error}`;
  }

  // ------------------------------------------------------------------ state: users, groups, setting

  async function loadState() {
    applyState(await api("GET", "/state"));
  }

  function applyState(state) {
    if (!isObject(state)) return;
    if (typeof state.version === "number") {
      if (state.version < S.stateVersion) return;
      S.stateVersion = state.version;
    }
    const key = JSON.stringify([state.bot, state.users, state.groups, state.groupChatSetting]);
    if (key === S.stateKey) return;
    S.stateKey = key;
    if (isObject(state.bot)) S.bot = state.bot;
    S.users = Array.isArray(state.users) ? state.users : [];
    S.groups = Array.isArray(state.groups) ? state.groups : [];
    S.setting = state.groupChatSetting || "allMessages";
    S.namesKey = JSON.stringify([S.bot.uid, S.bot.name, S.users.map((u) => [u.uid, u.name])]);
    if (!S.users.some((u) => u.uid === S.me)) {
      const saved = store.get("me");
      const fallback = S.users.find((u) => u.uid === "alice") || S.users[0];
      S.me = S.users.some((u) => u.uid === saved) ? saved : fallback ? fallback.uid : "";
    }
    if (!S.openId) {
      const saved = store.get("open");
      S.openId = saved && knownConversation(saved) ? saved : myDirectId();
    }
    renderAll();
  }

  function myDirectId() {
    return S.me ? conversationIdOf(S.me, S.bot.uid) : "";
  }

  function knownConversation(id) {
    if (id === myDirectId()) return true;
    if (S.groups.some((g) => `group_${g.guid}` === id)) return true;
    return [...S.messages.values()].some((m) => m.conversationId === id);
  }

  /** What the open conversation is: where messages go, its title, whether the current user may write. */
  function currentConversation() {
    const id = S.openId || myDirectId();
    if (id === myDirectId()) {
      return {
        id, kind: "direct", receiver: S.bot.uid, receiverType: "user", readOnly: !S.me,
        title: `${S.bot.name}`,
      };
    }
    if (id.startsWith("group_")) {
      const guid = id.slice("group_".length);
      const group = S.groups.find((g) => g.guid === guid) || { guid, name: guid, members: [], botIsMember: false };
      return { id, kind: "group", group, receiver: group.guid, receiverType: "group", readOnly: !S.me,
        title: group.name };
    }
    const owners = id.split("_user_").filter((uid) => !isBotUid(uid));
    const names = owners.map(nameOf);
    return {
      id, kind: "peek", owners, readOnly: true, receiver: "", receiverType: "user",
      title: `${names.join(" & ") || "?"} ↔ ${S.bot.name}`,
    };
  }

  // ------------------------------------------------------------------ messages

  function mergeMessages(list, { onlyNew = false } = {}) {
    let changed = false;
    for (const message of list || []) {
      if (!isObject(message) || message.id === undefined) continue;
      const id = String(message.id);
      if (onlyNew && S.messages.has(id)) continue;
      S.messages.set(id, { ...message, id });
      changed = true;
    }
    if (changed) scheduleRender();
  }

  function mainMessages(conversationId) {
    return [...S.messages.values()].filter((m) => m.conversationId === conversationId && !m.parentId).sort(byId);
  }

  function threadReplies(parentId) {
    return [...S.messages.values()].filter((m) => String(m.parentId || "") === parentId).sort(byId);
  }

  function otherDirectConversations() {
    const mine = myDirectId();
    const ids = new Set();
    for (const m of S.messages.values()) {
      if (m.receiverType === "user" && m.conversationId && m.conversationId !== mine) ids.add(m.conversationId);
    }
    return [...ids].sort();
  }

  // ------------------------------------------------------------------ rendering

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    Promise.resolve().then(() => {
      renderQueued = false;
      renderMessages();
      renderThread();
      renderConversations();
    });
  }

  function renderAll() {
    renderUsers();
    renderConversations();
    renderSettings();
    renderHeader();
    renderMessages();
    renderThread();
  }

  let usersKey = "";
  function renderUsers() {
    const picker = $("user-picker");
    const key = JSON.stringify(S.users.map((u) => [u.uid, u.name]));
    if (key !== usersKey) {
      usersKey = key; // rebuilt only when the users changed (an open drop-down stays open otherwise)
      picker.replaceChildren(...S.users.map((u) => h("option", { value: u.uid, text: `${u.name} (${u.uid})` })));
    }
    picker.value = S.me;
    picker.disabled = S.users.length === 0;
  }

  function unreadCount(conversationId) {
    const seen = S.seen.get(conversationId) || 0;
    let count = 0;
    for (const m of S.messages.values()) {
      if (m.conversationId === conversationId && Number(m.id) > seen && m.sender !== S.me) count += 1;
    }
    return count;
  }

  function conversationItem({ id, iconName, name, note, badge }) {
    const current = id === (S.openId || myDirectId());
    const unread = current ? 0 : unreadCount(id);
    const button = h(
      "button",
      {
        type: "button", class: "conversation", testid: "conversation", "aria-current": current ? "true" : "false",
        data: { conversationId: id }, onclick: () => openConversation(id),
      },
      h("span", { class: "conv-icon", "aria-hidden": "true" }, iconName ? icon(iconName) : "#"),
      h("span", { class: "conv-name" }, name, note ? h("span", { class: "conv-note", text: ` · ${note}` }) : null),
      badge ? h("span", { class: "badge warn", text: badge }) : null,
      unread ? h("span", { class: "badge", testid: "unread", text: String(unread), title: "new messages" }) : null,
    );
    return h("li", null, button);
  }

  let conversationsKey = "";
  function renderConversations() {
    const rows = [];
    if (S.me) rows.push({ id: myDirectId(), iconName: "bot", name: S.bot.name, note: "direct chat" });
    rows.push({ section: "Groups" });
    for (const g of S.groups) {
      const members = Array.isArray(g.members) ? g.members.length : 0;
      rows.push({ id: `group_${g.guid}`, name: g.name, note: plural(members, "member", "members"),
        badge: g.botIsMember ? null : "no bot" });
    }
    const others = otherDirectConversations();
    if (others.length) {
      rows.push({ section: "Other users' chats with the bot (read-only)" });
      for (const id of others) {
        const owners = id.split("_user_").filter((uid) => !isBotUid(uid));
        rows.push({ id, iconName: "eye", name: owners.map(nameOf).join(" & ") || id });
      }
    }
    const current = S.openId || myDirectId();
    for (const row of rows) if (row.id) row.state = [row.id === current, row.id === current ? 0 : unreadCount(row.id)];
    // Rebuilt only when something shown changed: a click is not lost to a rebuild between mouse down and up.
    const key = JSON.stringify(rows);
    if (key === conversationsKey) return;
    conversationsKey = key;
    $("conversation-list").replaceChildren(
      ...rows.map((row) => (row.section ? h("li", { class: "section", text: row.section }) : conversationItem(row))),
    );
  }

  const SETTING_HINTS = {
    allMessages: "The bot receives every message in the groups it is a member of.",
    mentionedMessages: "The bot receives only group messages that @mention it.",
    slashedMessages: "The bot receives only group messages that start with / (commands).",
    none: "The bot receives no group messages (CometChat's state for a new bot).",
  };

  function renderSettings() {
    $("group-setting").value = S.setting;
    $("group-setting-hint").textContent =
      `${SETTING_HINTS[S.setting] || ""} Messages in your direct chat with the bot always reach it.`;
  }

  function renderHeader() {
    const c = currentConversation();
    $("chat-title").textContent = c.kind === "group" ? `# ${c.title}` : c.title;
    const subtitle = $("chat-subtitle");
    const member = $("bot-member");
    const banner = $("readonly-banner");
    member.hidden = c.kind !== "group";
    banner.hidden = c.kind !== "peek";
    if (c.kind === "group") {
      const members = c.group.members || [];
      subtitle.textContent = `Group · ${plural(members.length, "member", "members")}: ${members.map(nameOf).join(", ")}`;
      $("bot-member-toggle").checked = Boolean(c.group.botIsMember);
    } else if (c.kind === "direct") {
      subtitle.textContent = `Your direct chat with the bot, as ${nameOf(S.me)}: every message reaches the bot`;
    } else {
      const owners = c.owners.map(nameOf).join(" & ");
      subtitle.textContent = `${owners}'s chat with the bot`;
      banner.textContent =
        `You are ${nameOf(S.me)}, looking at ${owners}'s chat with the bot. As in CometChat, only ${owners} ` +
        "can write here; you can still try its buttons (the bot checks who submits).";
    }
    const input = $("composer-input");
    const writable = !c.readOnly;
    for (const el of [input, $("send-button"), $("attach-button"), $("url-button"), $("custom-button"), $("mention-bot")]) {
      el.disabled = !writable;
    }
    if (!writable) {
      $("url-tray").hidden = true;
      $("custom-tray").hidden = true;
    }
    const where = c.kind === "group" ? `#${c.title}` : S.bot.name;
    input.placeholder = writable
      ? `Message ${where} as ${nameOf(S.me)}…`
      : S.me ? "Read-only: not your conversation" : "Add a user to start chatting";
    $("thread-composer-input").placeholder = writable ? `Reply in thread as ${nameOf(S.me)}…` : "Read-only";
    $("thread-composer-input").disabled = !writable;
    $("thread-send-button").disabled = !writable;
  }

  function nearBottom(scroller) {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function stick(scroller, force) {
    if (force || scroller.dataset.stick !== "false") {
      scroller.scrollTop = scroller.scrollHeight;
      scroller.dataset.stick = "true";
    }
  }

  function renderMessages(forceScroll) {
    const c = currentConversation();
    const list = mainMessages(c.id);
    syncList($("message-list"), list, "main");
    $("empty").hidden = list.length > 0;
    let highest = S.seen.get(c.id) || 0;
    for (const m of S.messages.values()) if (m.conversationId === c.id) highest = Math.max(highest, Number(m.id) || 0);
    S.seen.set(c.id, highest);
    stick($("main-scroller"), forceScroll);
  }

  function renderThread(forceScroll) {
    const panel = $("thread-panel");
    const parent = S.thread ? S.messages.get(S.thread) : null;
    if (!parent) {
      panel.hidden = true;
      $("app").classList.remove("with-thread");
      return;
    }
    panel.hidden = false;
    $("app").classList.add("with-thread");
    syncList($("thread-parent"), [parent], "parent");
    const replies = threadReplies(S.thread);
    $("thread-count").textContent = replies.length ? plural(replies.length, "reply", "replies") : "No replies yet";
    syncList($("thread-list"), replies, "thread");
    stick($("thread-scroller"), forceScroll);
  }

  /** Keyed update of a message list: only messages whose content (or local state) changed are rebuilt. */
  function syncList(container, messages, where) {
    if (!container.cache) container.cache = new Map();
    const cache = container.cache;
    const keep = new Set();
    let index = 0;
    for (const m of messages) {
      const signature = messageSignature(m);
      let entry = cache.get(m.id);
      if (!entry || entry.signature !== signature) {
        const node = renderMessage(m, where);
        const focus = entry ? focusIn(entry.node) : null;
        if (entry && entry.node.parentNode === container) entry.node.replaceWith(node);
        if (focus) restoreFocus(node, focus);
        entry = { signature, node };
        cache.set(m.id, entry);
      }
      keep.add(m.id);
      const at = container.children[index];
      if (at !== entry.node) container.insertBefore(entry.node, at || null);
      index += 1;
    }
    while (container.children.length > index) container.lastElementChild.remove();
    for (const id of [...cache.keys()]) if (!keep.has(id)) cache.delete(id);
  }

  /** The focused form control inside ``node`` (by its data-focus-key), with its caret. */
  function focusIn(node) {
    const active = document.activeElement;
    if (!active || !node.contains(active) || !active.dataset.focusKey) return null;
    let start = null;
    let end = null;
    try {
      start = active.selectionStart;
      end = active.selectionEnd;
    } catch {
      /* not a text control */
    }
    return { key: active.dataset.focusKey, start, end };
  }

  function restoreFocus(node, focus) {
    const target = [...node.querySelectorAll("[data-focus-key]")].find((el) => el.dataset.focusKey === focus.key);
    if (!target || target.disabled) return;
    target.focus({ preventScroll: true });
    if (focus.start !== null && typeof target.setSelectionRange === "function") {
      try {
        target.setSelectionRange(focus.start, focus.end);
      } catch {
        /* not a text control */
      }
    }
  }

  function messageSignature(m) {
    const key = `${S.me}|${m.id}`;
    const local = [
      [...(S.localDone.get(key) || [])],
      [...S.pending].filter((p) => p.startsWith(`${m.id}|`)),
      S.ierrors.get(key) || null,
      [...(S.invalid.get(key) || [])],
    ];
    return JSON.stringify([m, S.me, S.namesKey, local]);
  }

  function senderName(m) {
    const entity = m.data && m.data.entities && m.data.entities.sender && m.data.entities.sender.entity;
    return (entity && entity.name) || nameOf(m.sender) || m.sender;
  }

  function renderMessage(m, where) {
    const entity = m.data && m.data.entities && m.data.entities.sender && m.data.entities.sender.entity;
    const bot = isBotUid(m.sender) || (entity && entity.role === "bot");
    const mine = m.sender === S.me;
    const name = senderName(m);
    const li = h("li", {
      class: `message ${bot ? "bot" : mine ? "mine" : "other"}`,
      testid: "message",
      data: { messageId: m.id, sender: m.sender, category: m.category, type: m.type, bot: bot ? "true" : "false" },
    });
    const avatar = h("div", { class: "avatar", "aria-hidden": "true" }, bot ? icon("bot") : initials(name));
    if (!bot) avatar.style.backgroundColor = colorFor(m.sender);
    const time = formatTime(m.sentAt);
    const meta = h(
      "div",
      { class: "meta" },
      h("span", { class: "sender", testid: "message-sender", text: name }),
      bot ? h("span", { class: "bot-tag", text: "BOT" }) : null,
      h("time", { testid: "message-time", title: time.long, text: time.short }),
      m.editedAt && !m.deletedAt
        ? h("span", { class: "marker", testid: "message-edited", title: formatTime(m.editedAt).long, text: "edited" })
        : null,
    );
    const bubble = h("div", { class: "bubble" }, meta);
    if (m.deletedAt) {
      bubble.append(h("p", { class: "deleted", testid: "message-deleted", text: "This message was deleted" }));
    } else {
      bubble.append(renderContent(m));
      const reactions = renderReactions(m);
      if (reactions) bubble.append(reactions);
    }
    if (where === "main") {
      // "n replies" under a message with a thread; a quiet "Reply in thread" in the header line otherwise.
      const replies = Number(m.replyCount) || 0;
      const link = h("button", {
        type: "button",
        class: replies ? "thread-link" : "thread-link quiet",
        testid: "thread-button",
        data: { replyCount: replies },
        title: replies ? "Open the thread" : "Reply in thread",
        onclick: () => openThread(m.id),
      }, icon("thread"), replies ? plural(replies, "reply", "replies") : "Reply in thread");
      if (replies) bubble.append(link);
      else meta.append(link);
    }
    li.append(avatar, bubble);
    return li;
  }

  function renderReactions(m) {
    if (!isObject(m.reactions)) return null;
    const chips = [];
    for (const [emoji, uids] of Object.entries(m.reactions)) {
      if (!Array.isArray(uids) || uids.length === 0) continue;
      chips.push(
        h("span", {
          class: uids.includes(S.me) ? "reaction mine-reaction" : "reaction",
          testid: "reaction",
          data: { emoji },
          title: uids.map(nameOf).join(", "),
          text: `${emoji} ${uids.length}`,
        }),
      );
    }
    return chips.length ? h("div", { class: "reactions", testid: "reactions" }, chips) : null;
  }

  function renderContent(m) {
    const data = isObject(m.data) ? m.data : {};
    if (m.category === "message" && m.type === "text") return renderText(data);
    if (m.category === "message") return renderMedia(m, data);
    if (m.category === "custom") return renderCustom(m, data);
    if (m.category === "interactive") return renderInteractive(m, data);
    return renderOther(m, data);
  }

  function appendWithMentions(el, text, mentions) {
    const pattern = /<@uid:([^>\s]+)>/g;
    let last = 0;
    let match;
    while ((match = pattern.exec(text)) !== null) {
      el.append(text.slice(last, match.index));
      const uid = match[1].toLowerCase();
      const info = isObject(mentions) ? mentions[uid] || mentions[match[1]] : null;
      const name = (isObject(info) && info.name) || nameOf(uid);
      el.append(
        h("span", {
          class: uid === S.me ? "mention me" : "mention",
          testid: "mention",
          data: { uid },
          title: `@${uid}`,
          text: `@${name}`,
        }),
      );
      last = pattern.lastIndex;
    }
    el.append(text.slice(last));
  }

  function renderText(data) {
    const p = h("p", { class: "text", testid: "message-text" });
    appendWithMentions(p, typeof data.text === "string" ? data.text : String(data.text ?? ""), data.mentions);
    return p;
  }

  function basename(url) {
    try {
      return decodeURIComponent(new URL(url, window.location.href).pathname.split("/").pop() || "");
    } catch {
      return "";
    }
  }

  function renderMedia(m, data) {
    const wrap = h("div", { class: "media" });
    if (typeof data.text === "string" && data.text) wrap.append(renderText(data));
    let attachments = Array.isArray(data.attachments) ? data.attachments.filter(isObject) : [];
    if (!attachments.length && typeof data.url === "string") attachments = [{ url: data.url }];
    if (!attachments.length) wrap.append(h("p", { class: "deleted", text: `(a ${m.type} without an attachment)` }));
    for (const a of attachments) {
      const url = safeUrl(a.url);
      const name = typeof a.name === "string" && a.name ? a.name : basename(a.url) || m.type;
      if (!url) {
        wrap.append(h("p", { class: "deleted", text: `(${name}: not an http(s) URL, not shown)` }));
        continue;
      }
      const size = humanSize(a.size);
      const caption = () =>
        h("a", { class: "media-caption", href: url, target: "_blank", rel: "noopener noreferrer", testid: "message-caption",
          title: `Open ${name}` }, name, size ? ` · ${size}` : "");
      if (m.type === "image") {
        wrap.append(
          h("a", { href: url, target: "_blank", rel: "noopener noreferrer", title: name },
            h("img", { class: "media-img", src: url, alt: name, testid: "message-image",
              onerror: (event) => {
                event.target.alt = `${name} (could not be loaded)`;
                event.target.classList.add("broken");
              } })),
          caption(),
        );
      } else if (m.type === "video") {
        wrap.append(h("video", { class: "media-player", src: url, controls: true, preload: "metadata", testid: "message-video" }), caption());
      } else if (m.type === "audio") {
        wrap.append(h("audio", { class: "media-player", src: url, controls: true, preload: "metadata", testid: "message-audio" }), caption());
      } else {
        wrap.append(
          h("a", { class: "file-link", href: url, target: "_blank", rel: "noopener noreferrer", download: name, testid: "message-file" },
            icon("file"),
            h("span", { class: "file-name", text: name }),
            size ? h("span", { class: "file-size", text: size }) : null),
        );
      }
    }
    return wrap;
  }

  function renderCustom(m, data) {
    const payload = data.customData !== undefined ? data.customData : data.custom_data;
    return h("div", { class: "custom", testid: "message-custom" },
      h("div", { class: "custom-title", text: `Custom message · ${m.type}` }),
      h("pre", { class: "json", text: JSON.stringify(payload ?? null, null, 2) }));
  }

  function withoutEntities(data) {
    const { entities, ...rest } = data;
    return rest;
  }

  function renderOther(m, data) {
    const action = typeof data.action === "string" ? ` (${data.action})` : "";
    return h("div", { class: "summary", testid: "message-other" },
      h("div", { class: "summary-title", text: `${m.category} · ${m.type}${action}` }),
      h("pre", { class: "json", text: JSON.stringify(withoutEntities(data), null, 2) }));
  }

  // ------------------------------------------------------------------ interactive messages

  function doneIds(m) {
    const done = new Set(isObject(m.interactions) && Array.isArray(m.interactions[S.me]) ? m.interactions[S.me] : []);
    for (const id of S.localDone.get(`${S.me}|${m.id}`) || []) done.add(id);
    return done;
  }

  function goalReached(m, done) {
    const goal = isObject(m.data.interactionGoal) ? m.data.interactionGoal : null;
    const ids = goal && Array.isArray(goal.elementIds) ? goal.elementIds : [];
    switch (goal && goal.type) {
      case "anyOf":
      case "oneOf":
        return ids.some((id) => done.has(id));
      case "allOf":
        return ids.length > 0 && ids.every((id) => done.has(id));
      case "none":
        return false;
      default: // anyAction, or no goal
        return done.size > 0;
    }
  }

  function mayInteract(m) {
    return !m.deletedAt && Boolean(S.me) && (m.sender !== S.me || m.data.allowSenderInteraction === true);
  }

  function renderInteractive(m, data) {
    const d = isObject(data.interactiveData) ? data.interactiveData : {};
    if (m.type === "form") return renderForm(m, d);
    if (m.type === "card") return renderCard(m, d);
    return renderInteractiveSummary(m, d);
  }

  function interactionFeedback(m, d, done) {
    const nodes = [];
    if (typeof d.goalCompletionText === "string" && d.goalCompletionText && goalReached(m, done)) {
      nodes.push(h("p", { class: "goal", testid: "goal-completion", text: `✓ ${d.goalCompletionText}` }));
    }
    const error = S.ierrors.get(`${S.me}|${m.id}`);
    if (error) {
      nodes.push(h("p", { class: "ierror", role: "alert", testid: "interaction-error", data: { code: error.code },
        text: error.text }));
    }
    return nodes;
  }

  /** The values of a form as the current user filled them in (initialised from the defaults). */
  function formValues(m, d) {
    const key = `${S.me}|${m.id}`;
    let values = S.formValues.get(key);
    if (!values) {
      values = {};
      for (const el of Array.isArray(d.formFields) ? d.formFields : []) {
        if (!isObject(el) || typeof el.elementId !== "string") continue;
        if (el.elementType === "textInput") values[el.elementId] = typeof el.defaultValue === "string" ? el.defaultValue : "";
        else if (el.elementType === "checkbox") {
          values[el.elementId] = Array.isArray(el.defaultValue) ? el.defaultValue.map(String)
            : el.defaultValue ? [String(el.defaultValue)] : [];
        } else if (el.elementType === "dropdown" || el.elementType === "singleSelect") {
          values[el.elementId] = el.defaultValue !== undefined && el.defaultValue !== null ? String(el.defaultValue) : "";
        }
      }
      S.formValues.set(key, values);
    }
    return values;
  }

  function isRequired(el) {
    return el.optional !== true;
  }

  function fieldLabel(el, forId) {
    const text = typeof el.label === "string" && el.label ? el.label : el.elementId;
    return h(forId ? "label" : "legend", forId ? { for: forId } : null, text,
      isRequired(el) ? h("span", { class: "req", "aria-hidden": "true", text: "*" }) : null);
  }

  function renderForm(m, d) {
    const done = doneIds(m);
    const submit = isObject(d.submitElement) ? d.submitElement : null;
    const locked = Boolean(submit && done.has(submit.elementId) && submit.disableAfterInteracted);
    const values = formValues(m, d);
    const invalid = S.invalid.get(`${S.me}|${m.id}`) || new Set();
    const form = h("form", {
      class: "iform", testid: "interactive-form", noValidate: true, data: { messageId: m.id },
      onsubmit: (event) => {
        event.preventDefault();
        if (submit) interact(m, submit);
      },
    });
    if (typeof d.title === "string" && d.title) form.append(h("h3", { testid: "form-title", text: d.title }));
    for (const el of Array.isArray(d.formFields) ? d.formFields : []) {
      if (isObject(el)) form.append(renderField(m, el, values, locked || !mayInteract(m), invalid));
    }
    if (submit) form.append(h("div", { class: "actions" }, renderButton(m, submit, { submit: true })));
    form.append(...interactionFeedback(m, d, done));
    return form;
  }

  function renderField(m, el, values, locked, invalid) {
    const id = String(el.elementId ?? "");
    const domId = `f-${m.id}-${id}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const wrap = h("div", { class: invalid.has(id) ? "field invalid" : "field", data: { elementId: id, elementType: el.elementType } });
    const changed = () => {
      const key = `${S.me}|${m.id}`;
      const bad = S.invalid.get(key);
      if (bad && bad.delete(id)) {
        wrap.classList.remove("invalid");
        wrap.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
      }
    };
    const options = Array.isArray(el.options) ? el.options.filter(isObject) : [];
    switch (el.elementType) {
      case "textInput": {
        const lines = Number(el.maxLines) || 1;
        const placeholder = isObject(el.placeholder) ? el.placeholder.text : typeof el.placeholder === "string" ? el.placeholder : "";
        const input = lines > 1
          ? h("textarea", { id: domId, rows: String(Math.min(lines, 8)) })
          : h("input", { id: domId, type: "text" });
        input.dataset.testid = `field-${id}`;
        input.dataset.focusKey = domId;
        if (placeholder) input.placeholder = String(placeholder);
        input.value = String(values[id] ?? "");
        input.disabled = locked;
        if (isRequired(el)) input.setAttribute("aria-required", "true");
        if (invalid.has(id)) input.setAttribute("aria-invalid", "true");
        input.addEventListener("input", () => {
          values[id] = input.value;
          changed();
        });
        wrap.append(fieldLabel(el, domId), input);
        break;
      }
      case "dropdown": {
        const select = h("select", { id: domId, testid: `field-${id}`, data: { focusKey: domId } });
        select.append(h("option", { value: "", text: "Choose…", disabled: true }));
        for (const o of options) select.append(h("option", { value: String(o.value), text: String(o.label ?? o.value) }));
        select.value = String(values[id] ?? "");
        select.disabled = locked;
        if (invalid.has(id)) select.setAttribute("aria-invalid", "true");
        select.addEventListener("change", () => {
          values[id] = select.value;
          changed();
        });
        wrap.append(fieldLabel(el, domId), select);
        break;
      }
      case "checkbox":
      case "singleSelect": {
        const multi = el.elementType === "checkbox";
        const fieldset = h("fieldset", { testid: `field-${id}`, "aria-invalid": invalid.has(id) ? "true" : null });
        fieldset.append(fieldLabel(el, null));
        const box = h("div", { class: multi ? "options" : "segmented" });
        for (const o of options) {
          const value = String(o.value);
          const input = h("input", { type: multi ? "checkbox" : "radio", name: domId, value,
            data: { focusKey: `${domId}=${value}` } });
          input.checked = multi ? (values[id] || []).includes(value) : values[id] === value;
          input.disabled = locked;
          input.addEventListener("change", () => {
            if (multi) {
              const set = new Set(values[id] || []);
              if (input.checked) set.add(value);
              else set.delete(value);
              values[id] = options.map((x) => String(x.value)).filter((v) => set.has(v));
            } else if (input.checked) values[id] = value;
            changed();
          });
          box.append(h("label", null, input, h("span", { text: String(o.label ?? value) })));
        }
        fieldset.append(box);
        wrap.append(fieldset);
        break;
      }
      case "label":
        wrap.append(h("p", { class: "label-el", testid: `field-${id}`, text: String(el.text ?? el.label ?? "") }));
        break;
      case "button":
        wrap.append(renderButton(m, el, { secondary: true }));
        break;
      default:
        wrap.append(
          h("p", { class: "label-el", text: `(a ${el.elementType || "?"} element the playground does not render)` }),
          h("pre", { class: "json", text: JSON.stringify(el, null, 2) }),
        );
    }
    return wrap;
  }

  function renderButton(m, el, { submit = false, secondary = false } = {}) {
    const id = String(el.elementId ?? "");
    const action = isObject(el.action) ? el.action : {};
    const isUrl = action.actionType === "urlNavigation";
    const done = doneIds(m).has(id);
    const pending = S.pending.has(`${m.id}|${id}`);
    const button = h("button", {
      type: submit ? "submit" : "button",
      class: `ibutton${secondary ? " secondary" : ""}${isUrl ? " url" : ""}`,
      testid: `button-${id}`,
      data: { elementId: id, done: done ? "true" : "false", pending: pending ? "true" : null, focusKey: `button-${id}` },
      title: isUrl ? String(action.url || "") : action.actionType === "apiAction" ? `Calls ${action.url || "?"}` : null,
      text: String(el.buttonText || el.text || el.label || id || "Button"),
    });
    button.disabled = pending || (done && el.disableAfterInteracted === true) || !mayInteract(m);
    if (!submit) button.addEventListener("click", () => interact(m, el));
    return button;
  }

  function renderCard(m, d) {
    const done = doneIds(m);
    const card = h("div", { class: "card", testid: "interactive-card", data: { messageId: m.id } });
    const image = safeUrl(d.imageUrl);
    if (image) {
      const img = h("img", { class: "card-img", src: image, alt: "", testid: "card-image" });
      img.addEventListener("error", () => {
        img.hidden = true;
      });
      card.append(img);
    }
    if (d.text !== undefined) card.append(h("p", { class: "card-text", testid: "card-text", text: String(d.text) }));
    const actions = Array.isArray(d.cardActions) ? d.cardActions.filter(isObject) : [];
    if (actions.length) card.append(h("div", { class: "actions" }, actions.map((el) => renderButton(m, el))));
    card.append(...interactionFeedback(m, d, done));
    return card;
  }

  function renderInteractiveSummary(m, d) {
    const lines = [];
    let title;
    if (m.type === "scheduler") {
      title = `Scheduler${d.title ? `: ${d.title}` : ""}`;
      if (d.duration) lines.push(`Meetings of ${d.duration} min${d.bufferTime ? `, ${d.bufferTime} min buffer` : ""}`);
      if (d.timezoneCode) lines.push(`Time zone: ${d.timezoneCode}`);
      if (d.dateRangeStart || d.dateRangeEnd) lines.push(`From ${d.dateRangeStart || "?"} to ${d.dateRangeEnd || "?"}`);
      if (isObject(d.availability)) {
        for (const [day, slots] of Object.entries(d.availability)) {
          const text = (Array.isArray(slots) ? slots : []).filter(isObject).map((s) => `${s.from}–${s.to}`).join(", ");
          lines.push(`${day}: ${text || "—"}`);
        }
      }
    } else {
      title = m.type === "customInteractive" ? "Custom interactive message" : `Interactive ${m.type}`;
      if (typeof d.text === "string") lines.push(d.text);
      if (typeof d.title === "string") lines.push(d.title);
    }
    return h("div", { class: "summary", testid: "interactive-summary" },
      h("div", { class: "summary-title", text: title }),
      lines.map((line) => h("div", { text: line })),
      h("p", { class: "hint", text: "The playground shows this message as JSON; CometChat's UI kits render it." }),
      h("details", { class: "json-details" },
        h("summary", { text: "JSON" }),
        h("pre", { class: "json", text: JSON.stringify(m.data.interactiveData ?? null, null, 2) })));
  }

  function setInteractionError(m, text, code) {
    S.ierrors.set(`${S.me}|${m.id}`, { text, code: code || "" });
    scheduleRender();
  }

  function markDone(m, id) {
    const key = `${S.me}|${m.id}`;
    if (!S.localDone.has(key)) S.localDone.set(key, new Set());
    S.localDone.get(key).add(id);
  }

  function collectFormData(m, d) {
    const values = formValues(m, d);
    const data = {};
    for (const el of Array.isArray(d.formFields) ? d.formFields : []) {
      if (!isObject(el) || !["textInput", "dropdown", "checkbox", "singleSelect"].includes(el.elementType)) continue;
      const value = values[el.elementId];
      data[el.elementId] = el.elementType === "checkbox" ? [...(value || [])] : value ?? "";
    }
    return data;
  }

  function missingFields(d, formData) {
    const missing = [];
    for (const el of Array.isArray(d.formFields) ? d.formFields : []) {
      if (!isObject(el) || !isRequired(el) || !(el.elementId in formData)) continue;
      const value = formData[el.elementId];
      const empty = Array.isArray(value) ? value.length === 0 : String(value ?? "").trim() === "";
      if (empty) missing.push(el);
    }
    return missing;
  }

  /** A click on a button of a form or card: what CometChat's v4 web UI kit does (PLATFORM.md 5.4). */
  async function interact(m, el) {
    const id = String(el.elementId ?? "");
    const action = isObject(el.action) ? el.action : {};
    const busy = `${m.id}|${id}`;
    if (S.pending.has(busy) || !mayInteract(m)) return;
    const userKey = `${S.me}|${m.id}`;
    S.ierrors.delete(userKey);
    if (action.actionType === "urlNavigation") {
      const url = safeUrl(action.url);
      if (!url) return setInteractionError(m, "This button's link is not an http(s) URL, so it was not opened.");
      window.open(url, "_blank", "noopener,noreferrer");
      markDone(m, id);
      scheduleRender();
      return;
    }
    if (action.actionType !== "apiAction") {
      return setInteractionError(m, `The playground cannot run a ${action.actionType || "missing"} action.`);
    }
    const url = safeUrl(action.url);
    if (!url) return setInteractionError(m, "This button has no http(s) URL to call.");
    const d = isObject(m.data.interactiveData) ? m.data.interactiveData : {};
    let formData = {};
    if (m.type === "form") {
      formData = collectFormData(m, d);
      const submitId = isObject(d.submitElement) ? d.submitElement.elementId : undefined;
      if (id === submitId) {
        const missing = missingFields(d, formData);
        if (missing.length) {
          S.invalid.set(userKey, new Set(missing.map((x) => x.elementId)));
          return setInteractionError(m, `Please fill in: ${missing.map((x) => x.label || x.elementId).join(", ")}.`, "required");
        }
      }
    }
    S.invalid.delete(userKey);
    const body = {
      payload: action.payload || {},
      trigger: "ui_message_interacted",
      appID: APP_ID,
      region: REGION,
      data: {
        conversationId: m.conversationId,
        sender: m.sender,
        receiver: m.receiver,
        receiverType: m.receiverType,
        messageCategory: "interactive",
        messageType: m.type,
        messageId: m.id,
        interactedBy: S.me,
        interactionTimezoneCode: timeZone(),
        interactedElementId: id,
        formData,
      },
    };
    const headers = { "Content-Type": "application/json" };
    if (isObject(action.headers)) for (const [k, v] of Object.entries(action.headers)) headers[k] = String(v);
    const method = String(action.method || "POST").toUpperCase();
    S.pending.add(busy);
    scheduleRender();
    try {
      const response = await fetch(url, {
        method, headers, body: method === "GET" || method === "HEAD" ? undefined : JSON.stringify(body),
      });
      if (response.ok) {
        markDone(m, id);
      } else {
        let data = null;
        try {
          data = await response.json();
        } catch {
          data = null;
        }
        const error = new ApiError(response.status, data);
        const text = error.message === `HTTP ${response.status}` ? `The bot answered HTTP ${response.status}.` : error.message;
        S.ierrors.set(userKey, { text: error.code ? `${text} (${error.code})` : text, code: error.code || String(response.status) });
      }
    } catch (error) {
      S.ierrors.set(userKey, { text: `Could not reach ${url}: ${error.message}`, code: "network" });
    } finally {
      S.pending.delete(busy);
      scheduleRender();
    }
  }

  // ------------------------------------------------------------------ navigation

  function openConversation(id) {
    if (!id) return;
    S.openId = id;
    store.set("open", id);
    const parent = S.thread ? S.messages.get(S.thread) : null;
    if (parent && parent.conversationId !== id) S.thread = null;
    renderAll();
    renderMessages(true);
    if (!$("composer-input").disabled) $("composer-input").focus();
  }

  function switchUser(uid) {
    if (!S.users.some((u) => u.uid === uid)) return;
    const wasMine = (S.openId || myDirectId()) === myDirectId();
    S.me = uid;
    store.set("me", uid);
    if (wasMine) {
      S.openId = myDirectId();
      store.set("open", S.openId);
      S.thread = null;
    }
    hideError();
    setStatus("", "");
    renderAll();
    renderMessages(true);
  }

  function openThread(id) {
    S.thread = id;
    renderThread(true);
    const input = $("thread-composer-input");
    if (!input.disabled) input.focus();
  }

  function closeThread() {
    S.thread = null;
    renderThread();
  }

  // ------------------------------------------------------------------ sending

  function setStatus(text, kind) {
    const status = $("relay-status");
    status.textContent = text;
    status.dataset.kind = kind || "";
  }

  function showError(error) {
    $("error-text").textContent = typeof error === "string" ? error : describeError(error);
    $("error").hidden = false;
  }

  function hideError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  function explainRelay(relayed, conversation) {
    if (relayed === null || relayed === undefined) {
      if (conversation.kind !== "group") return ["Not relayed to the bot.", "warn"];
      if (!conversation.group.botIsMember) return ["Not relayed: the bot is not a member of this group.", "warn"];
      const why = {
        mentionedMessages: "the bot only receives group messages that @mention it",
        slashedMessages: "the bot only receives group messages that start with /",
        none: "the bot receives no group messages",
      }[S.setting] || "the bot's group setting";
      return [`Not relayed: ${why} (Bot settings).`, "warn"];
    }
    if (relayed >= 200 && relayed < 300) return [`✓ Relayed to the bot (its callback answered ${relayed}).`, "ok"];
    return [`The bot's callback answered HTTP ${relayed}: see the bot's log.`, "error"];
  }

  async function sendMessage(content, parentId) {
    const conversation = currentConversation();
    if (conversation.readOnly) return false;
    const body = { sender: S.me, receiver: conversation.receiver, receiverType: conversation.receiverType, ...content };
    if (parentId) body.parentId = parentId;
    try {
      const answer = await api("POST", "/messages", body);
      hideError();
      mergeMessages([answer.message], { onlyNew: true });
      const [text, kind] = explainRelay(answer.relayed, conversation);
      setStatus(text, kind);
      return true;
    } catch (error) {
      showError(error);
      setStatus("", "");
      return false;
    }
  }

  /** `@uid` of a known user or the bot becomes CometChat's mention token `<@uid:uid>`. */
  function withMentionTokens(text) {
    const known = new Set([S.bot.uid, ...S.users.map((u) => u.uid)]);
    return text.replace(/(^|[^\w@<:/.-])@([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)/g, (all, before, uid) => {
      const lower = uid.toLowerCase();
      return known.has(lower) ? `${before}<@uid:${lower}>` : all;
    });
  }

  // Sends go out one after another, in the order they were made (a quick second Enter is not lost or reordered).
  let sendQueue = Promise.resolve();
  function enqueue(task) {
    const run = sendQueue.then(task, task);
    sendQueue = run.catch(() => undefined);
    return run;
  }

  function sendText(input, parentId) {
    const raw = input.value;
    if (!raw.trim()) return Promise.resolve(false);
    input.value = "";
    autosize(input);
    const text = withMentionTokens(raw);
    return enqueue(async () => {
      const ok = await sendMessage({ category: "message", type: "text", text }, parentId);
      if (!ok && !input.value) {
        input.value = raw; // not sent: give the text back
        autosize(input);
      }
      return ok;
    });
  }

  async function uploadAndSend(file) {
    if (!file) return;
    setStatus(`Uploading ${file.name}…`, "");
    const form = new FormData();
    form.append("file", file, file.name);
    let attachment;
    try {
      attachment = await api("POST", "/uploads", form);
    } catch (error) {
      showError(error);
      setStatus("", "");
      return;
    }
    await enqueue(() => sendMessage({ category: "message", type: typeForMime(attachment.mimeType), attachments: [attachment] }, null));
  }

  async function sendMediaUrl(form) {
    const url = safeUrl(form.elements.url.value);
    if (!url || !/^https?:/i.test(form.elements.url.value.trim())) {
      showError("Paste an http(s) URL of an image, video, audio or file.");
      return;
    }
    const name = basename(url) || "file";
    const extension = name.includes(".") ? name.split(".").pop().toLowerCase() : "";
    const mimeType = MIME_BY_EXTENSION[extension] || "application/octet-stream";
    const type = form.elements.type.value || typeForMime(mimeType);
    const ok = await enqueue(() =>
      sendMessage({ category: "message", type, attachments: [{ url, name, mimeType, extension }] }, null));
    if (ok) form.elements.url.value = "";
  }

  async function sendCustom(form) {
    const type = form.elements.type.value.trim();
    if (!type) {
      showError("A custom message needs a type (e.g. location).");
      return;
    }
    let customData;
    try {
      customData = JSON.parse(form.elements.data.value);
    } catch (error) {
      showError(`customData is not valid JSON: ${error.message}`);
      return;
    }
    if (!isObject(customData) || Object.keys(customData).length === 0) {
      showError("customData must be a non-empty JSON object, like {\"latitude\": 48.85, \"longitude\": 2.35}.");
      return;
    }
    await enqueue(() => sendMessage({ category: "custom", type, customData }, null));
  }

  // ------------------------------------------------------------------ the composer: Enter, autosize, @ mentions

  function autosize(input) {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, 180)}px`;
  }

  function setupComposer(input, popup, send) {
    let choices = [];
    let selected = 0;

    const close = () => {
      popup.hidden = true;
      choices = [];
    };

    const query = () => {
      const before = input.value.slice(0, input.selectionStart);
      const match = /(^|[^\w@<:/.-])@([A-Za-z0-9_.-]*)$/.exec(before);
      return match ? match[2].toLowerCase() : null;
    };

    const choose = (uid) => {
      const caret = input.selectionStart;
      const before = input.value.slice(0, caret).replace(/@([A-Za-z0-9_.-]*)$/, `@${uid} `);
      input.value = before + input.value.slice(caret);
      input.selectionStart = input.selectionEnd = before.length;
      close();
      input.focus();
      autosize(input);
    };

    const update = () => {
      const q = query();
      if (q === null) return close();
      const people = [S.bot, ...S.users.filter((u) => u.uid !== S.me)];
      choices = people
        .filter((u) => u.uid.toLowerCase().startsWith(q) || String(u.name).toLowerCase().startsWith(q))
        .slice(0, 6);
      if (!choices.length) return close();
      selected = Math.min(selected, choices.length - 1);
      popup.replaceChildren(
        ...choices.map((u, i) =>
          h("button", {
            type: "button", role: "option", testid: "mention-option", "aria-selected": i === selected ? "true" : "false",
            data: { uid: u.uid },
            onmousedown: (event) => {
              event.preventDefault();
              choose(u.uid);
            },
          }, isBotUid(u.uid) ? icon("bot") : null, h("span", { text: u.name }), h("span", { class: "uid", text: `@${u.uid}` })),
        ),
      );
      popup.hidden = false;
    };

    input.addEventListener("keydown", (event) => {
      if (!popup.hidden && choices.length) {
        if (event.key === "ArrowDown" || event.key === "ArrowUp") {
          event.preventDefault();
          selected = (selected + (event.key === "ArrowDown" ? 1 : choices.length - 1)) % choices.length;
          update();
          return;
        }
        if (event.key === "Enter" || event.key === "Tab") {
          event.preventDefault();
          choose(choices[selected].uid);
          return;
        }
        if (event.key === "Escape") {
          event.preventDefault();
          close();
          return;
        }
      }
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    });
    input.addEventListener("input", () => {
      selected = 0;
      autosize(input);
      update();
    });
    input.addEventListener("blur", close);
    input.addEventListener("click", update);
    return { close };
  }

  // ------------------------------------------------------------------ long polling

  function setConnection(state, text) {
    const el = $("connection");
    el.dataset.state = state;
    el.textContent = text;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function pollForever() {
    let backoff = 1000;
    for (;;) {
      try {
        const response = await fetch(`${API}/updates?since=${S.version}&wait=${POLL_WAIT}`, { cache: "no-store" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const answer = await response.json();
        backoff = 1000;
        setConnection("live", "live");
        const version = Number(answer.version) || 0;
        if (version < S.version) {
          // The playground restarted (its emulator lives in memory): start over.
          S.messages.clear();
          S.seen.clear();
          S.version = 0;
          S.stateKey = "";
          S.stateVersion = 0;
          await loadState();
          continue;
        }
        const changed = version !== S.version;
        S.version = version;
        mergeMessages(answer.messages);
        if (!S.loaded) {
          S.loaded = true;
          for (const m of S.messages.values()) {
            S.seen.set(m.conversationId, Math.max(S.seen.get(m.conversationId) || 0, Number(m.id) || 0));
          }
          renderConversations();
        }
        if (changed) await loadState(); // users, groups and the setting change versions too
      } catch (error) {
        setConnection("retrying", `offline, retrying in ${Math.round(backoff / 1000)} s`);
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 15000);
      }
    }
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $("user-picker").addEventListener("change", (event) => switchUser(event.target.value));

    $("add-user-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      const uid = form.elements.uid.value.trim().toLowerCase();
      const name = form.elements.name.value.trim();
      if (!uid) return;
      try {
        const user = await api("POST", "/users", { uid, name });
        await loadState();
        form.reset();
        $("add-user").open = false;
        hideError();
        switchUser(user && user.uid ? user.uid : uid);
      } catch (error) {
        showError(error);
      }
    });

    $("new-group-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      const guid = form.elements.guid.value.trim().toLowerCase();
      if (!guid || !S.me) return;
      try {
        const group = await api("POST", "/groups", { guid, name: form.elements.name.value.trim(), creator: S.me });
        await loadState();
        form.reset();
        $("new-group").open = false;
        hideError();
        openConversation(`group_${group && group.guid ? group.guid : guid}`);
      } catch (error) {
        showError(error);
      }
    });

    $("group-setting").addEventListener("change", async (event) => {
      try {
        applyState(await api("PUT", "/settings", { groupChatSetting: event.target.value }));
        hideError();
        setStatus(`Group setting: ${event.target.value}.`, "ok");
      } catch (error) {
        showError(error);
        renderSettings();
      }
    });

    $("bot-member-toggle").addEventListener("change", async (event) => {
      const c = currentConversation();
      if (c.kind !== "group") return;
      const member = event.target.checked;
      try {
        const path = `/groups/${encodeURIComponent(c.group.guid)}/members/${encodeURIComponent(S.bot.uid)}`;
        applyState(await api("PUT", path, { member }));
        hideError();
        setStatus(member ? `${S.bot.name} joined #${c.title}.` : `${S.bot.name} left #${c.title}: it will not see messages there.`, "ok");
      } catch (error) {
        showError(error);
        renderHeader();
      }
    });

    const input = $("composer-input");
    setupComposer(input, $("mention-popup"), () => sendText(input, null));
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      sendText(input, null);
    });
    $("mention-bot").addEventListener("click", () => {
      const needsSpace = input.value && !/\s$/.test(input.value);
      input.value = `${input.value}${needsSpace ? " " : ""}@${S.bot.uid} `;
      input.focus();
      input.selectionStart = input.selectionEnd = input.value.length;
      autosize(input);
    });

    const threadInput = $("thread-composer-input");
    setupComposer(threadInput, $("thread-mention-popup"), () => sendText(threadInput, S.thread));
    $("thread-composer").addEventListener("submit", (event) => {
      event.preventDefault();
      sendText(threadInput, S.thread);
    });
    $("thread-close").addEventListener("click", closeThread);

    const fileInput = $("file-input");
    $("attach-button").addEventListener("click", () => fileInput.click());
    fileInput.addEventListener("change", () => {
      const file = fileInput.files && fileInput.files[0];
      uploadAndSend(file).finally(() => {
        fileInput.value = "";
      });
    });

    const trays = [
      [$("url-button"), $("url-tray")],
      [$("custom-button"), $("custom-tray")],
    ];
    for (const [button, tray] of trays) {
      button.addEventListener("click", () => {
        const open = tray.hidden;
        for (const [b, t] of trays) {
          t.hidden = true;
          b.setAttribute("aria-expanded", "false");
        }
        tray.hidden = !open;
        button.setAttribute("aria-expanded", String(open));
        if (open) tray.querySelector("input, textarea").focus();
      });
    }
    $("url-tray").addEventListener("submit", (event) => {
      event.preventDefault();
      sendMediaUrl(event.target);
    });
    $("custom-tray").addEventListener("submit", (event) => {
      event.preventDefault();
      sendCustom(event.target);
    });

    $("error-close").addEventListener("click", hideError);

    for (const chip of document.querySelectorAll("[data-try]")) {
      chip.addEventListener("click", () => {
        if (currentConversation().readOnly) openConversation(myDirectId());
        input.value = chip.dataset.try;
        sendText(input, null);
      });
    }

    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && S.thread && document.activeElement !== threadInput) closeThread();
    });

    // Keep the lists scrolled to the newest message while the reader is at the bottom (also when images load).
    for (const scroller of [$("main-scroller"), $("thread-scroller")]) {
      scroller.addEventListener("scroll", () => {
        scroller.dataset.stick = nearBottom(scroller) ? "true" : "false";
      });
    }
    if ("ResizeObserver" in window) {
      // The list gets shorter when a tray or an error opens: stay at the newest message.
      const observer = new ResizeObserver((entries) => entries.forEach((entry) => stick(entry.target, false)));
      observer.observe($("main-scroller"));
      observer.observe($("thread-scroller"));
    }
    document.addEventListener(
      "load",
      (event) => {
        for (const scroller of [$("main-scroller"), $("thread-scroller")]) {
          if (scroller.contains(event.target)) stick(scroller, false);
        }
      },
      true,
    );
  }

  async function start() {
    wire();
    setConnection("connecting", "connecting…");
    for (let delay = 1000; ; delay = Math.min(delay * 2, 15000)) {
      try {
        await loadState();
        break;
      } catch (error) {
        showError(`The playground API does not answer (${describeError(error)}); retrying…`);
        await sleep(delay);
      }
    }
    hideError();
    renderMessages(true);
    if (!$("composer-input").disabled) $("composer-input").focus();
    pollForever();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
