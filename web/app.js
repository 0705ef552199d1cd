// The Chorus web page: log in, conversations, messages, history on scroll, search, edits and
// recalls, typing and read marks, files (images shown inline, other files as download links). All protocol work (tracking, gap filling, reconnecting,
// resending) is in chorus-client.js; this file keeps the view state and draws it.
import { ChorusClient, devToken, dmId, newClientId } from "./chorus-client.js";

/** Messages per history page when scrolling back. */
const HISTORY_PAGE = 30;
/** How long a typing indicator stays without another typing frame. */
const TYPING_SHOWN_MS = 3000;
/** At most one typing frame per this interval. */
const TYPING_EVERY_MS = 2000;

const element = (id) => document.getElementById(id);
const view = {
  client: null,
  me: null,
  /** conversation id → its view state (see `conversationState`) */
  conversations: new Map(),
  openId: null,
  /** the message being edited: `{ conversation, seq }` */
  editing: null,
  /** the message the next send answers: `{ conversation, seq }` */
  replying: null,
  /** the message being forwarded: `{ conversation, seq }` */
  forwarding: null,
  /** the message a search hit pointed at: `{ conversation, seq }` */
  highlight: null,
  lastTypingSent: 0,
  /** where history and search are read from (`/web/config.json`; unset: this origin) */
  readUrl: undefined,
};

// The node serving this page says where to read history and search from: itself with
// `chorus serve`, the search nodes in the distributed mode. Loaded before anything can log in.
try {
  const settings = await (await fetch("/web/config.json")).json();
  view.readUrl = settings.read_url || undefined;
} catch {
  view.readUrl = undefined;
}

function conversationState(id) {
  let state = view.conversations.get(id);
  if (!state) {
    state = {
      id,
      title: null,
      /**
       * seq → message `{ seq, sender, ts, text, edited, recalled, origin, reply_to, mentions,
       * forwarded_from, attachment }` or notice `{ seq, notice }`; `reply_to` is the seq answered
       * (live) or `{ seq, sender, quote }` (history); `attachment`: `{ id, name, size, type }`
       */
      items: new Map(),
      /** client message id → `{ text, attachment }`, until its event or ack arrives */
      pending: new Map(),
      queuedFor: new Map(), // client id -> home region, for a pending send answered `accepted`
      /** every message with seq >= floor is known; history below it loads on scroll */
      floor: 1,
      loadingHistory: null,
      lastSeq: 0,
      readSeq: 0,
      unread: 0,
      /** of the unread messages, those that mention me */
      mentions: 0,
      /** how long its messages live, in seconds (null: forever or the node's default) */
      ttl: null,
      muted: false,
      blocked: false,
      pins: [],
      /** message seq → whether its reactions must be read again once the read in flight ends */
      refreshing: new Map(),
      /** user → the seq up to which they read (from live `read` frames) */
      othersRead: new Map(),
      /** user → until when their typing indicator shows */
      typing: new Map(),
    };
    view.conversations.set(id, state);
  }
  return state;
}

function displayName(state) {
  if (state.title) return state.title;
  if (state.id.startsWith("dm:")) {
    const [, first, second] = state.id.split(":");
    return first === view.me ? second : first;
  }
  return state.id;
}

// ---- log in ----------------------------------------------------------------------------------

function userOfToken(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(payload), (char) => char.charCodeAt(0)));
    return JSON.parse(json).sub ?? null;
  } catch {
    return null;
  }
}

function showLoginError(message) {
  element("login-error").textContent = message;
}

element("login-form").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const user = element("user-name").value.trim();
  try {
    // one device per tab, so two tabs of one user are two devices
    const device = `web-${newClientId().slice(0, 8)}`;
    const token = await devToken(location.origin, user, device);
    start(token, user, device);
  } catch (error) {
    showLoginError(
      error.status === 404
        ? "Dev tokens are off on this node (distributed mode): paste a token instead."
        : `Could not log in: ${error.message}`,
    );
  }
});

element("token-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const token = element("token-input").value.trim();
  const user = userOfToken(token);
  if (!user) return showLoginError("That is not a Chorus token (a JWT with a sub claim).");
  start(token, user);
});

/**
 * Opens the chat. `device` is set when the token is a dev token (`POST /v1/dev/token`): the client
 * then renews it before it expires with a new dev token for the same user and device. A pasted
 * token has no provider: when it expires the page says so and the user signs in again.
 */
function start(token, user, device) {
  const remember = (current) => sessionStorage.setItem("chorus-login", JSON.stringify({ token: current, user, device }));
  remember(token);
  view.me = user;
  element("me").textContent = user;
  element("login").hidden = true;
  element("app").hidden = false;
  const renewToken = device ? () => devToken(location.origin, user, device) : null;
  const client = new ChorusClient({ baseUrl: location.origin, readUrl: view.readUrl, token, renewToken });
  view.client = client;
  window.chorus = view; // for debugging from the console
  client
    .on("status", ({ state }) => showStatus(state))
    .on("token", ({ token: renewed }) => remember(renewed))
    .on("expired", () => {
      sessionStorage.removeItem("chorus-login"); // so a reload shows the sign-in form
      const status = element("status");
      status.title = "click to sign in again";
      status.addEventListener("click", () => location.reload(), { once: true });
    })
    .on("baseline", ({ conversation, seq }) => {
      const state = conversationState(conversation);
      state.floor = seq + 1;
      state.lastSeq = Math.max(state.lastSeq, seq);
    })
    .on("conversation", (summary) => {
      const state = conversationState(summary.id);
      state.lastSeq = Math.max(state.lastSeq, summary.last_seq);
      state.readSeq = Math.max(state.readSeq, summary.read_seq);
      // the server counts messages of others after the user's read cursor (the same on every
      // device); a server without the count gives the seqs after the cursor
      if (summary.id !== view.openId) {
        state.unread = summary.unread ?? Math.max(0, summary.last_seq - summary.read_seq);
        state.mentions = summary.mentions ?? 0;
      }
      state.muted = Boolean(summary.muted);
      state.ttl = summary.message_ttl_s ?? null;
      state.blocked = Boolean(summary.blocked);
      if (summary.id === view.openId) renderMuteToggle();
      renderConversations();
    })
    .on("event", applyEvent)
    .on("ack", applyAck)
    .on("accepted", ({ id, conversation, home }) => {
      // durable, waiting for its home region to sequence it (docs/MULTI_REGION.md)
      const state = conversationState(conversation);
      if (!state.pending.has(id)) return;
      state.queuedFor.set(id, home);
      if (conversation === view.openId) renderMessages();
    })
    .on("read", (frame) => {
      const state = conversationState(frame.conversation);
      if (frame.user === view.me) {
        state.readSeq = Math.max(state.readSeq, frame.seq);
        state.unread = 0;
        state.mentions = 0;
        renderConversations();
      } else {
        state.othersRead.set(frame.user, Math.max(state.othersRead.get(frame.user) ?? 0, frame.seq));
        if (frame.conversation === view.openId) renderMessages();
      }
    })
    .on("block", ({ conversation, blocked }) => {
      conversationState(conversation).blocked = blocked;
      if (conversation === view.openId) renderMuteToggle();
    })
    .on("mute", ({ conversation, muted }) => {
      conversationState(conversation).muted = muted;
      renderConversations();
      if (conversation === view.openId) renderMuteToggle();
    })
    .on("typing", (frame) => {
      if (frame.user === view.me) return;
      conversationState(frame.conversation).typing.set(frame.user, Date.now() + TYPING_SHOWN_MS);
      renderTyping();
      setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
    });
  window.addEventListener("offline", () => client.pause());
  window.addEventListener("online", () => client.resume());
  document.addEventListener("visibilitychange", () => markRead());
  client.start();
  if (!navigator.onLine) client.pause();
}

function showStatus(state) {
  const status = element("status");
  status.dataset.state = state;
  status.textContent =
    {
      open: "online",
      paused: "offline",
      closed: "reconnecting",
      connecting: "connecting",
      expired: "token expired, sign in again",
    }[state] ?? state;
}

// ---- events ----------------------------------------------------------------------------------

function applyEvent(event) {
  if ((event.kind === "members_removed" || event.kind === "disband") && (event.members ?? []).includes(view.me)) {
    forgetConversation(event.conversation); // I left, was removed, or the group was disbanded
    return;
  }
  const state = conversationState(event.conversation);
  state.lastSeq = Math.max(state.lastSeq, event.seq);
  switch (event.kind) {
    case "message":
      state.items.set(event.seq, {
        seq: event.seq,
        sender: event.sender,
        ts: event.ts,
        text: event.text,
        edited: false,
        recalled: false,
        origin: event.origin,
        reply_to: event.reply_to,
        mentions: event.mentions ?? [],
        forwarded_from: event.forwarded_from,
        attachment: event.attachment,
      });
      if (event.sender === view.me) state.pending.delete(event.client_msg_id);
      // the count each sync brings covers what a fill hands over; live events add to it
      else if (event.origin === "live" && (event.conversation !== view.openId || document.visibilityState !== "visible")) {
        state.unread += 1;
        if ((event.mentions ?? []).includes(view.me)) state.mentions += 1;
      }
      break;
    case "edit": {
      const target = state.items.get(event.target_seq);
      if (target) Object.assign(target, { text: event.text, edited: true });
      break;
    }
    case "recall": {
      const target = state.items.get(event.target_seq);
      if (target) Object.assign(target, { text: "", recalled: true });
      break;
    }
    case "reaction":
      // the counts are the server's (a user's reaction counts once): read them again
      refreshReactions(state, event.target_seq);
      break;
    case "pin":
      state.items.set(event.seq, { seq: event.seq, notice: `${event.sender} ${event.pinned ? "pinned" : "unpinned"} #${event.target_seq}` });
      if (event.conversation === view.openId) loadPins(state);
      break;
    case "conversation_created":
      state.title = event.title ?? state.title;
      state.items.set(event.seq, { seq: event.seq, notice: `${event.sender} created ${event.title ?? event.conversation}` });
      break;
    case "role":
      state.items.set(event.seq, {
        seq: event.seq,
        notice: event.role === "owner" ? `${event.sender} made ${event.member} the owner` : `${event.sender} made ${event.member} ${event.role === "admin" ? "an admin" : "a member"}`,
      });
      if (event.conversation === view.openId) loadRoster(state);
      break;
    case "retention":
      state.ttl = event.ttl_seconds > 0 ? event.ttl_seconds : null;
      state.items.set(event.seq, { seq: event.seq, notice: `${event.sender} set messages to ${event.ttl_seconds > 0 ? `disappear after ${ttlLabel(event.ttl_seconds)}` : "the default lifetime"}` });
      if (event.conversation === view.openId) renderRetention(state);
      break;
    case "rename":
      state.title = event.title;
      state.items.set(event.seq, { seq: event.seq, notice: `${event.sender} renamed the group to ${event.title}` });
      if (event.conversation === view.openId) element("chat-title").textContent = displayName(state);
      break;
    case "members_added":
    case "members_removed":
      state.items.set(event.seq, {
        seq: event.seq,
        notice: `${(event.members ?? []).join(", ")} ${event.kind === "members_added" ? "joined" : "left"}`,
      });
      if (event.conversation === view.openId) loadRoster(state);
      break;
    default:
      break;
  }
  renderConversations();
  if (event.conversation === view.openId) {
    renderMessages();
    markRead();
  }
}

/** An ack of my send: the message is stored with its seq (its event may come too; same seq). */
function applyAck(ack) {
  const state = conversationState(ack.conversation);
  const sent = state.pending.get(ack.id);
  if (sent === undefined) return;
  state.pending.delete(ack.id);
  state.queuedFor.delete(ack.id);
  if (!state.items.has(ack.seq)) {
    state.items.set(ack.seq, { seq: ack.seq, sender: view.me, ts: Date.now(), text: sent.text, attachment: sent.attachment, edited: false, recalled: false, origin: "ack" });
  }
  state.lastSeq = Math.max(state.lastSeq, ack.seq);
  if (ack.conversation === view.openId) renderMessages();
}

function markRead() {
  const state = view.openId && view.conversations.get(view.openId);
  if (!state || document.visibilityState !== "visible") return;
  state.unread = 0;
  state.mentions = 0;
  if (state.lastSeq > state.readSeq) {
    state.readSeq = state.lastSeq;
    view.client.read(state.id, state.lastSeq);
  }
  renderConversations();
}

// ---- conversations ---------------------------------------------------------------------------

function renderConversations() {
  const list = element("conversations");
  list.replaceChildren(
    ...[...view.conversations.values()]
      .sort((left, right) => displayName(left).localeCompare(displayName(right)))
      .map((state) => {
        const item = document.createElement("li");
        item.dataset.conversation = state.id;
        item.classList.toggle("active", state.id === view.openId);
        const name = document.createElement("span");
        name.textContent = displayName(state);
        item.append(name);
        if (state.muted) {
          const mark = document.createElement("span");
          mark.className = "muted";
          mark.title = "muted";
          mark.textContent = "🔕";
          item.append(mark);
        }
        if (state.mentions > 0) {
          const badge = document.createElement("span");
          badge.className = "mention-count";
          badge.title = "mentions of you";
          badge.textContent = `@${state.mentions}`;
          item.append(badge);
        }
        if (state.unread > 0) {
          const badge = document.createElement("span");
          badge.className = "unread";
          badge.textContent = String(state.unread);
          item.append(badge);
        }
        item.addEventListener("click", () => openConversation(state.id));
        return item;
      }),
  );
}

async function openConversation(id) {
  const state = conversationState(id);
  view.openId = id;
  view.editing = null;
  element("editing").hidden = true;
  view.replying = null;
  element("replying").hidden = true;
  view.forwarding = null;
  element("forward-form").hidden = true;
  element("chat-title").textContent = displayName(state);
  element("composer").hidden = false;
  renderMuteToggle();
  renderConversations();
  renderMessages();
  renderTyping();
  markRead();
  element("message-input").focus();
  element("pins").hidden = true;
  loadPins(state);
  element("roster").hidden = true;
  loadRoster(state);
  await fillScreen(state);
}

// ---- group members and roles -----------------------------------------------------------------

/** Reads the open group's members and roles; shows the management controls my role allows. */
async function loadRoster(state) {
  if (!state.id.startsWith("g:")) {
    element("members-toggle").hidden = true;
    renderRetention(state);
    return;
  }
  try {
    state.roster = await view.client.members(state.id);
  } catch {
    return; // shown again at the next member event or when the group is opened
  }
  if (state.id !== view.openId) return;
  renderRoster(state);
}

function myRole(state) {
  return (state.roster ?? []).find((member) => member.user === view.me)?.role ?? "member";
}

/** Choices of how long messages live (seconds; 0: the node's default). */
const RETENTION_CHOICES = [
  [0, "default lifetime"],
  [3600, "1 hour"],
  [86400, "1 day"],
  [604800, "7 days"],
  [2592000, "30 days"],
];

function ttlLabel(seconds) {
  return RETENTION_CHOICES.find(([value]) => value === seconds)?.[1] ?? `${seconds} s`;
}

/** The open conversation's retention choice: a group's owner, or either member of a DM, sets it. */
function renderRetention(state) {
  const select = element("retention");
  const allowed = state.id.startsWith("dm:") || myRole(state) === "owner";
  select.hidden = !allowed;
  const value = String(state.ttl ?? 0);
  if (![...select.options].some((option) => option.value === value)) select.append(new Option(`${state.ttl} s`, value));
  select.value = value;
}

element("retention").addEventListener("change", () => {
  const state = view.openId && view.conversations.get(view.openId);
  if (state) view.client.setRetention(state.id, Number(element("retention").value)).acked.catch(showRefusal);
});

function renderRoster(state) {
  const mine = myRole(state);
  const manages = mine === "owner" || mine === "admin";
  element("members-toggle").hidden = false;
  element("rename-group").hidden = !manages;
  element("disband-group").hidden = mine !== "owner";
  element("add-member-form").hidden = !manages;
  const act = (label, className, run) => button(className, label, () => run().acked.then(() => loadRoster(state)).catch(showRefusal));
  renderRetention(state);
  element("roster-list").replaceChildren(
    ...(state.roster ?? []).map(({ user, role }) => {
      const item = document.createElement("li");
      item.dataset.user = user;
      item.dataset.role = role;
      const name = document.createElement("span");
      name.textContent = `${user}${role === "member" ? "" : ` (${role})`}`;
      item.append(name);
      if (manages && user !== view.me && role !== "owner") {
        if (role === "admin") item.append(act("demote", "demote", () => view.client.setRole(state.id, user, "member")));
        else item.append(act("make admin", "promote", () => view.client.setRole(state.id, user, "admin")));
        item.append(act("remove", "remove", () => view.client.removeMembers(state.id, [user])));
      }
      if (mine === "owner" && user !== view.me) item.append(act("make owner", "transfer", () => view.client.setRole(state.id, user, "owner")));
      return item;
    }),
  );
}

element("members-toggle").addEventListener("click", () => {
  element("roster").hidden = !element("roster").hidden;
});

element("add-member-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const state = view.openId && view.conversations.get(view.openId);
  const members = element("add-member").value.split(/[\s,]+/).filter(Boolean);
  if (!state || members.length === 0) return;
  element("add-member").value = "";
  view.client.addMembers(state.id, members).acked.then(() => loadRoster(state)).catch(showRefusal);
});

element("rename-group").addEventListener("click", () => {
  const state = view.openId && view.conversations.get(view.openId);
  if (!state) return;
  element("rename-form").hidden = false;
  element("rename-input").value = state.title ?? "";
  element("rename-input").focus();
});

element("rename-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const state = view.openId && view.conversations.get(view.openId);
  const title = element("rename-input").value.trim();
  element("rename-form").hidden = true;
  if (state && title) view.client.rename(state.id, title).acked.catch(showRefusal);
});

element("disband-group").addEventListener("click", () => {
  const state = view.openId && view.conversations.get(view.openId);
  if (!state || !confirm(`Disband ${displayName(state)} for everyone?`)) return;
  view.client
    .disband(state.id)
    .acked.then(() => forgetConversation(state.id))
    .catch(showRefusal);
});

/** The open conversation's mute button: muting changes nothing about delivery, only this list. */
function renderMuteToggle() {
  const toggle = element("mute-toggle");
  const state = view.openId && view.conversations.get(view.openId);
  toggle.hidden = !state;
  if (state) toggle.textContent = state.muted ? "Unmute" : "Mute";
  // blocking is between two users: offered in direct conversations
  const block = element("block-toggle");
  const other = state ? dmPeer(state.id) : null;
  block.hidden = !other;
  if (other) block.textContent = state.blocked ? `Unblock ${other}` : `Block ${other}`;
  element("leave-group").hidden = !state || !state.id.startsWith("g:");
  if (!state || !state.id.startsWith("g:")) {
    for (const id of ["members-toggle", "rename-group", "disband-group", "roster", "rename-form"]) element(id).hidden = true;
  }
  if (!state) {
    element("retention").hidden = true;
  }
}

/** The other user of a direct conversation of mine, or null. */
function dmPeer(id) {
  const parts = id.startsWith("dm:") ? id.slice(3).split(":") : [];
  if (parts.length !== 2) return null;
  return parts[0] === view.me ? parts[1] : parts[0];
}

element("leave-group").addEventListener("click", () => {
  const state = view.openId && view.conversations.get(view.openId);
  if (!state) return;
  view.client
    .leave(state.id)
    .acked.then(() => forgetConversation(state.id))
    .catch(showRefusal);
});

/** Takes a conversation I am no longer in off the list (and closes it if open). */
function forgetConversation(id) {
  view.conversations.delete(id);
  if (view.openId === id) {
    view.openId = null;
    element("chat-title").textContent = "Pick a conversation";
    element("composer").hidden = true;
    element("pins").hidden = true;
    element("roster").hidden = true;
    element("messages").replaceChildren();
    renderMuteToggle();
  }
  renderConversations();
}

element("block-toggle").addEventListener("click", () => {
  const state = view.openId && view.conversations.get(view.openId);
  const other = state && dmPeer(state.id);
  if (other) view.client.block(other, !state.blocked);
});

element("mute-toggle").addEventListener("click", () => {
  const state = view.openId && view.conversations.get(view.openId);
  if (state) view.client.mute(state.id, !state.muted);
});

element("open-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const peer = element("peer").value.trim();
  if (!peer) return;
  element("peer").value = "";
  openConversation(peer.startsWith("g:") || peer.startsWith("dm:") ? peer : dmId(view.me, peer));
});

element("group-form").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const name = element("group-name").value.trim();
  const members = element("group-members").value.split(/[\s,]+/).filter(Boolean);
  const id = name.startsWith("g:") ? name : `g:${name}`;
  try {
    await view.client.createGroup(id, members, name.replace(/^g:/, ""));
    element("group-name").value = "";
    element("group-members").value = "";
    openConversation(id);
  } catch (error) {
    alert(`Could not create ${id}: ${error.message}`);
  }
});

// ---- messages and history --------------------------------------------------------------------

/** Loads one page of history below the floor; keeps the scroll position. */
function loadOlder(state) {
  if (state.floor <= 1) return Promise.resolve();
  if (state.loadingHistory) return state.loadingHistory;
  state.loadingHistory = (async () => {
    try {
      const page = await view.client.messages(state.id, { before_seq: state.floor, limit: HISTORY_PAGE });
      for (const message of page) {
        if (!state.items.has(message.seq)) state.items.set(message.seq, { ...message, origin: "history" });
      }
      state.floor = page.length < HISTORY_PAGE ? 1 : page[0].seq;
      if (state.id === view.openId) {
        const list = element("messages");
        const fromBottom = list.scrollHeight - list.scrollTop;
        renderMessages({ keepScroll: true });
        list.scrollTop = list.scrollHeight - fromBottom;
      }
    } finally {
      state.loadingHistory = null;
    }
  })();
  return state.loadingHistory;
}

/** Loads history until the list can scroll (or there is no more). */
async function fillScreen(state) {
  const list = element("messages");
  while (state.id === view.openId && state.floor > 1 && list.scrollHeight <= list.clientHeight + 40) {
    await loadOlder(state);
  }
}

element("messages").addEventListener("scroll", () => {
  const state = view.openId && view.conversations.get(view.openId);
  if (state && element("messages").scrollTop < 60) loadOlder(state);
});

function renderMessages({ keepScroll = false } = {}) {
  const state = view.conversations.get(view.openId);
  const list = element("messages");
  if (!state) return list.replaceChildren();
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const readByOthers = Math.max(0, ...state.othersRead.values());
  // messages older than the conversation's lifetime are gone from view as from history
  const since = state.ttl ? Date.now() - state.ttl * 1000 : null;
  const items = [...state.items.values()]
    .filter((item) => item.notice || since === null || !item.ts || item.ts >= since)
    .sort((left, right) => left.seq - right.seq)
    .map((item) => renderItem(state, item, readByOthers));
  for (const [clientId, { text, attachment }] of state.pending) {
    items.push(renderItem(state, { seq: null, clientId, sender: view.me, text, attachment, pending: true, queuedFor: state.queuedFor.get(clientId) }, readByOthers));
  }
  list.replaceChildren(...items);
  if (atBottom && !keepScroll) list.scrollTop = list.scrollHeight;
}

function renderItem(state, item, readByOthers) {
  const entry = document.createElement("li");
  if (item.notice) {
    entry.className = "notice";
    entry.dataset.seq = item.seq;
    entry.textContent = item.notice;
    return entry;
  }
  const mine = item.sender === view.me;
  entry.className = "message";
  entry.classList.toggle("mine", mine);
  entry.classList.toggle("pending", Boolean(item.pending));
  entry.classList.toggle("recalled", Boolean(item.recalled));
  entry.classList.toggle("read", mine && item.seq !== null && item.seq <= readByOthers);
  entry.classList.toggle("highlight", view.highlight?.conversation === state.id && view.highlight.seq === item.seq);
  if (item.seq !== null) entry.dataset.seq = item.seq;
  if (item.clientId) entry.dataset.clientId = item.clientId;
  entry.dataset.sender = item.sender;
  entry.dataset.origin = item.origin ?? "pending";
  entry.classList.toggle("mentions-me", (item.mentions ?? []).includes(view.me));
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = item.sender;
  entry.append(sender);
  if (item.forwarded_from) {
    const forwarded = document.createElement("span");
    forwarded.className = "forwarded";
    forwarded.textContent = `forwarded from ${item.forwarded_from.sender}`;
    entry.append(forwarded);
  }
  const quote = replyQuote(state, item);
  if (quote) entry.append(quote);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = item.recalled ? "message recalled" : item.text;
  entry.append(text);
  if (item.attachment && !item.recalled) entry.append(attachmentView(item.attachment));
  const meta = document.createElement("span");
  meta.className = "meta";
  const unsent = item.queuedFor ? `queued for ${item.queuedFor}` : "sending…";
  meta.textContent = [item.edited ? "edited" : "", item.ts ? new Date(item.ts).toLocaleTimeString() : unsent].filter(Boolean).join(" · ");
  entry.append(meta);
  if (mine && !item.pending) {
    const mark = document.createElement("span");
    mark.className = "read-mark";
    mark.textContent = item.seq <= readByOthers ? "✓✓ read" : "✓";
    entry.append(mark);
    if (!item.recalled) entry.append(actions(state, item));
  }
  if (!item.pending && !item.recalled && item.seq !== null) {
    // any member pins any message, for everyone
    const pinned = state.pins.some((pin) => pin.message.seq === item.seq);
    const pin = document.createElement("button");
    pin.type = "button";
    pin.className = "pin";
    pin.textContent = pinned ? "unpin" : "pin";
    pin.addEventListener("click", () => view.client.pin(state.id, item.seq, !pinned).acked.catch(showRefusal));
    entry.append(pin, button("reply", "reply", () => startReply(state, item)), button("forward", "forward", () => startForward(state, item)));
    entry.append(reactionBar(state, item));
  }
  return entry;
}

/** Types shown inline (the ones the server serves as themselves); other files are downloaded. */
const INLINE_IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif"]);

/** A size in bytes for people: `512 B`, `1.5 KB`, `25 MB`. */
function humanSize(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let size = Number(bytes) || 0;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${unit === 0 || size >= 10 ? Math.round(size) : size.toFixed(1)} ${units[unit]}`;
}

/** What a message without text says about its file: `📎 cat.png`. */
function attachmentLabel(attachment) {
  return attachment ? `📎 ${attachment.name}` : "";
}

/**
 * A message's file: an image shown inline (bounded by the style sheet; a click opens it whole),
 * or a download link with the file's name and size. Both read the file from the serving node with
 * the token in the URL.
 */
function attachmentView(attachment) {
  const box = document.createElement("span");
  box.className = "attachment";
  box.dataset.attachment = attachment.id;
  const link = document.createElement("a");
  link.href = view.client.attachmentUrl(attachment.id);
  if (INLINE_IMAGE_TYPES.has(attachment.type)) {
    link.target = "_blank";
    link.rel = "noopener";
    const image = document.createElement("img");
    image.src = link.href;
    image.alt = attachment.name;
    image.title = `${attachment.name} (${humanSize(attachment.size)})`;
    link.append(image);
  } else {
    box.classList.add("attachment-file");
    link.download = attachment.name;
    link.textContent = `📎 ${attachment.name}`;
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = humanSize(attachment.size);
    box.append(link, size);
    return box;
  }
  box.append(link);
  return box;
}

/** Quick reactions offered on every message. */
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];

/**
 * A message's reactions: one chip per emoji with its count (mine marked), which toggles my
 * reaction, and the quick reactions not used yet.
 */
function reactionBar(state, item) {
  const bar = document.createElement("span");
  bar.className = "reactions";
  const counts = item.reactions ?? [];
  for (const { emoji, count, me } of counts) {
    const chip = button("reaction", `${emoji} ${count}`, () => view.client.react(state.id, item.seq, emoji, !me).acked.catch(showRefusal));
    chip.classList.toggle("mine", me);
    chip.dataset.emoji = emoji;
    bar.append(chip);
  }
  for (const emoji of QUICK_REACTIONS.filter((emoji) => !counts.some((count) => count.emoji === emoji))) {
    const add = button("add-reaction", emoji, () => view.client.react(state.id, item.seq, emoji, true).acked.catch(showRefusal));
    add.dataset.emoji = emoji;
    add.title = `react with ${emoji}`;
    bar.append(add);
  }
  return bar;
}

/**
 * Reads message `seq`'s reactions again (after a reaction event) and shows them. One read per
 * message at a time; events that arrive meanwhile make one more read after it.
 */
async function refreshReactions(state, seq) {
  if (state.refreshing.has(seq)) {
    state.refreshing.set(seq, true);
    return;
  }
  state.refreshing.set(seq, false);
  try {
    const page = await view.client.messages(state.id, { after_seq: seq - 1, limit: 1 });
    const message = page.find((candidate) => candidate.seq === seq);
    const item = state.items.get(seq);
    if (message && item && !item.notice) {
      item.reactions = message.reactions ?? [];
      if (state.id === view.openId) renderMessages({ keepScroll: true });
    }
  } catch {
    // shown again with the next reaction, or when history is read
  } finally {
    const again = state.refreshing.get(seq);
    state.refreshing.delete(seq);
    if (again) refreshReactions(state, seq);
  }
}

function button(className, label, onClick) {
  const made = document.createElement("button");
  made.type = "button";
  made.className = className;
  made.textContent = label;
  made.addEventListener("click", onClick);
  return made;
}

/**
 * The quote of the message a reply answers, which jumps to it when clicked: from the message
 * itself when it is loaded (as it stands now), else from the history's quote.
 */
function replyQuote(state, item) {
  if (item.reply_to === undefined || item.reply_to === null) return null;
  const seq = typeof item.reply_to === "object" ? item.reply_to.seq : item.reply_to;
  const original = state.items.get(seq);
  const known = original && !original.notice ? original : typeof item.reply_to === "object" ? { sender: item.reply_to.sender, text: item.reply_to.quote, recalled: item.reply_to.quote === null } : null;
  const quote = document.createElement("span");
  quote.className = "reply-quote";
  quote.dataset.replyTo = seq;
  const words = known ? (known.recalled ? "message recalled" : known.text || attachmentLabel(known.attachment)) : `message #${seq}`;
  quote.textContent = `↩ ${known?.sender ?? ""}${known?.sender ? ": " : ""}${[...words].slice(0, 100).join("")}`;
  quote.addEventListener("click", () => jumpTo(state.id, seq));
  return quote;
}

function startReply(state, item) {
  view.replying = { conversation: state.id, seq: item.seq };
  view.editing = null;
  element("editing").hidden = true;
  element("replying").hidden = false;
  element("replying").querySelector("span").textContent = `${item.sender}: ${[...(item.text || attachmentLabel(item.attachment))].slice(0, 40).join("")}`;
  element("message-input").focus();
}

function startForward(state, item) {
  view.forwarding = { conversation: state.id, seq: item.seq };
  element("forward-form").hidden = false;
  element("forward-form").querySelector("span").textContent = `#${item.seq} (${item.sender})`;
  element("forward-to").focus();
}

element("cancel-reply").addEventListener("click", () => {
  view.replying = null;
  element("replying").hidden = true;
});

element("cancel-forward").addEventListener("click", () => {
  view.forwarding = null;
  element("forward-form").hidden = true;
});

element("forward-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const target = element("forward-to").value.trim();
  const forwarding = view.forwarding;
  if (!target || !forwarding) return;
  const conversation = target.startsWith("g:") || target.startsWith("dm:") ? target : dmId(view.me, target);
  element("forward-to").value = "";
  element("forward-form").hidden = true;
  view.forwarding = null;
  view.client
    .forward(conversation, forwarding.conversation, forwarding.seq)
    .acked.then(() => conversationState(conversation))
    .then(() => renderConversations())
    .catch(showRefusal);
});

/** Reads the open conversation's pinned messages and shows them above the messages. */
async function loadPins(state) {
  try {
    state.pins = await view.client.pins(state.id);
  } catch {
    return; // shown again at the next pin event or when the conversation is opened
  }
  if (state.id !== view.openId) return;
  const bar = element("pins");
  bar.replaceChildren(
    ...state.pins.map((pin) => {
      const item = document.createElement("li");
      item.dataset.seq = pin.message.seq;
      item.textContent = `📌 ${pin.message.recalled ? "message recalled" : pin.message.text || attachmentLabel(pin.message.attachment)} — ${pin.message.sender}`;
      item.title = `pinned by ${pin.pinned_by}`;
      return item;
    }),
  );
  bar.hidden = state.pins.length === 0;
  renderMessages();
}

function actions(state, item) {
  const box = document.createElement("span");
  box.className = "actions";
  const edit = document.createElement("button");
  edit.type = "button";
  edit.className = "edit";
  edit.textContent = "edit";
  edit.addEventListener("click", () => {
    view.editing = { conversation: state.id, seq: item.seq };
    element("editing").hidden = false;
    element("editing").querySelector("span").textContent = `#${item.seq}`;
    element("message-input").value = item.text;
    element("message-input").focus();
  });
  const recall = document.createElement("button");
  recall.type = "button";
  recall.className = "recall";
  recall.textContent = "recall";
  recall.addEventListener("click", () => view.client.recall(state.id, item.seq).acked.catch(showRefusal));
  box.append(edit, recall);
  return box;
}

function showRefusal(error) {
  alert(`Refused: ${error.message} (${error.code})`);
}

element("cancel-edit").addEventListener("click", () => {
  view.editing = null;
  element("editing").hidden = true;
  element("message-input").value = "";
});

element("composer").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const input = element("message-input");
  const text = input.value;
  const state = view.openId && conversationState(view.openId);
  if (!state || !text.trim()) return;
  input.value = "";
  if (view.editing) {
    view.client.edit(view.editing.conversation, view.editing.seq, text).acked.catch(showRefusal);
    view.editing = null;
    element("editing").hidden = true;
    return;
  }
  const replyTo = view.replying?.conversation === state.id ? view.replying.seq : undefined;
  view.replying = null;
  element("replying").hidden = true;
  sendMessage(state, text, { replyTo });
});

/** Sends a message (with a file already uploaded: `attachment` `{ id, name, size, type }`). */
function sendMessage(state, text, { replyTo, attachment } = {}) {
  const { id, acked } = view.client.send(state.id, text, undefined, { replyTo, attachment: attachment?.id });
  state.pending.set(id, { text, attachment });
  renderMessages();
  element("messages").scrollTop = element("messages").scrollHeight;
  acked.catch((error) => {
    state.pending.delete(id);
    renderMessages();
    showRefusal(error);
  });
}

element("attach").addEventListener("click", () => element("attach-input").click());

/**
 * A chosen file is uploaded to the open conversation, then sent in a message with the text typed
 * (if any, and not an edit) and the reply being written. A refusal (too large, a type the node
 * does not take) is shown like any other; the text stays in the composer then.
 */
element("attach-input").addEventListener("change", async () => {
  const chooser = element("attach-input");
  const file = chooser.files?.[0];
  chooser.value = ""; // the same file can be chosen again
  const state = view.openId && conversationState(view.openId);
  if (!file || !state) return;
  const attach = element("attach");
  attach.disabled = true;
  attach.title = `uploading ${file.name}…`;
  let id;
  try {
    id = await view.client.uploadAttachment(state.id, file);
  } catch (error) {
    // a refusal has the server's code; a network failure has none
    showRefusal(error.code ? error : { code: "unavailable", message: `upload failed: ${error.message}` });
    return;
  } finally {
    attach.disabled = false;
    attach.title = "attach a file (sent with the message typed, if any)";
  }
  // what is typed goes with the file unless it is an edit, or another conversation was opened
  const input = element("message-input");
  const withText = !view.editing && view.openId === state.id;
  const text = withText ? input.value : "";
  if (withText) input.value = "";
  const replyTo = view.replying?.conversation === state.id ? view.replying.seq : undefined;
  if (replyTo !== undefined) {
    view.replying = null;
    element("replying").hidden = true;
  }
  sendMessage(state, text, { replyTo, attachment: { id, name: file.name, size: file.size, type: file.type || "application/octet-stream" } });
});

element("message-input").addEventListener("input", () => {
  if (!view.openId || view.editing || Date.now() - view.lastTypingSent < TYPING_EVERY_MS) return;
  view.lastTypingSent = Date.now();
  view.client.typing(view.openId);
});

function renderTyping() {
  const state = view.openId && view.conversations.get(view.openId);
  const now = Date.now();
  const typing = state ? [...state.typing].filter(([, until]) => until > now).map(([user]) => user) : [];
  element("typing").textContent = typing.length ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : "";
}

// ---- search ----------------------------------------------------------------------------------

/** Snippets are HTML-escaped text with matches in <b>…</b>: keep exactly that, as nodes. */
function snippetNodes(snippet) {
  const nodes = [];
  snippet.split(/(<b>.*?<\/b>)/).forEach((part) => {
    const bold = part.startsWith("<b>");
    const text = new DOMParser().parseFromString(bold ? part.slice(3, -4) : part, "text/html").documentElement.textContent;
    if (!bold) return nodes.push(document.createTextNode(text));
    const mark = document.createElement("b");
    mark.textContent = text;
    nodes.push(mark);
  });
  return nodes;
}

element("search-form").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const query = element("search-input").value.trim();
  const results = element("search-results");
  if (!query) {
    results.hidden = true;
    return;
  }
  let hits;
  try {
    hits = await view.client.search(query, { limit: 20 });
  } catch (error) {
    hits = [];
    showRefusal(error);
  }
  results.hidden = false;
  if (hits.length === 0) {
    const none = document.createElement("li");
    none.className = "none";
    none.textContent = `Nothing found for “${query}”`;
    return results.replaceChildren(none);
  }
  results.replaceChildren(
    ...hits.map((hit) => {
      const item = document.createElement("li");
      item.className = "hit";
      item.dataset.conversation = hit.conversation;
      item.dataset.seq = hit.seq;
      const where = document.createElement("span");
      where.className = "where";
      where.textContent = `${displayName(conversationState(hit.conversation))} · ${hit.sender} · #${hit.seq}`;
      item.append(where, ...snippetNodes(hit.snippet));
      item.addEventListener("click", () => jumpTo(hit.conversation, hit.seq));
      return item;
    }),
  );
});

async function jumpTo(conversation, seq) {
  await openConversation(conversation);
  const state = conversationState(conversation);
  while (state.floor > seq) await loadOlder(state);
  view.highlight = { conversation, seq };
  renderMessages({ keepScroll: true });
  element("messages").querySelector(`[data-seq="${seq}"]`)?.scrollIntoView({ block: "center" });
}

// ---- resume a login after a reload -------------------------------------------------------------

const saved = sessionStorage.getItem("chorus-login");
if (saved) {
  const { token, user, device } = JSON.parse(saved);
  start(token, user, device);
}
