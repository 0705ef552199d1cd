// Chorus client library: the reference for how a client uses the protocol (PROTOCOL.md,
// docs/protocol.md). Plain ES module, no dependencies; runs in browsers and in Node (the unit
// tests inject a WebSocket, fetch and timers).
//
// What it guarantees to the application:
// - timeline events are handed over once each, in seq order per conversation, with no holes:
//   a hole (an event whose seq is beyond last + 1) is filled from
//   `GET /v1/conversations/{id}/events?after_seq=<last>` before anything after it is handed over;
//   duplicates (seq <= last) are dropped;
// - after every (re)connect the client asks `GET /v1/conversations` and fills every conversation
//   whose `last_seq` is past what it has seen, so nothing sent while it was away is missed;
// - a send, edit or recall stays in the outbox until its ack arrives; it is sent again, with the
//   same client message id (so the server acks it once and never stores it twice), after a
//   reconnect, after no answer within `ackTimeoutMs`, or after `unavailable`/`rate_limited`;
// - a lost connection is retried with exponential backoff (with jitter), reset by `welcome`.

/** Error codes after which a client frame is worth sending again (same id). */
const RETRYABLE_CODES = new Set(["unavailable", "rate_limited"]);
/** Page size of gap filling (`/events` serves at most 1000 per call). */
export const FILL_PAGE = 1000;

/** The id of the direct conversation between two users: `dm:<a>:<b>`, ids in byte order. */
export function dmId(userA, userB) {
  const encoder = new TextEncoder();
  const bytesA = encoder.encode(userA);
  const bytesB = encoder.encode(userB);
  let order = 0;
  for (let index = 0; index < Math.min(bytesA.length, bytesB.length) && order === 0; index++) {
    order = bytesA[index] - bytesB[index];
  }
  if (order === 0) order = bytesA.length - bytesB.length;
  return order <= 0 ? `dm:${userA}:${userB}` : `dm:${userB}:${userA}`;
}

/** A fresh client message id (unique per sender; kept across resends). */
export function newClientId() {
  if (globalThis.crypto?.randomUUID && globalThis.isSecureContext !== false) {
    return globalThis.crypto.randomUUID();
  }
  const random = Math.random().toString(36).slice(2, 12);
  return `${Date.now().toString(36)}-${random}`;
}

/**
 * The last seq handed over per conversation, and events held back behind a hole.
 *
 * `offer(event)` answers `{ apply, gapAfter }`: the events to hand over now, in seq order (the
 * offered one and any held ones it unblocks), and, when a hole remains, the seq after which
 * events must be fetched (`null` when there is none).
 */
export class SeqTracker {
  constructor() {
    /** conversation → last seq handed over */
    this.last = new Map();
    /** conversation → (seq → event) received beyond a hole */
    this.held = new Map();
  }

  lastSeq(conversation) {
    return this.last.get(conversation) ?? 0;
  }

  known(conversation) {
    return this.last.has(conversation);
  }

  /** Starts tracking `conversation` at `seq` (its earlier events are not wanted as events). */
  baseline(conversation, seq) {
    if (!this.last.has(conversation)) this.last.set(conversation, seq);
  }

  offer(event) {
    const conversation = event.conversation;
    const last = this.lastSeq(conversation);
    if (!Number.isInteger(event.seq) || event.seq <= last) {
      return { apply: [], gapAfter: null }; // a duplicate (or not a timeline event)
    }
    if (event.seq > last + 1) {
      if (!this.held.has(conversation)) this.held.set(conversation, new Map());
      this.held.get(conversation).set(event.seq, event);
      return { apply: [], gapAfter: last };
    }
    const apply = [event];
    let seq = event.seq;
    const held = this.held.get(conversation);
    if (held) {
      while (held.has(seq + 1)) {
        apply.push(held.get(seq + 1));
        held.delete(seq + 1);
        seq += 1;
      }
      for (const heldSeq of held.keys()) if (heldSeq <= seq) held.delete(heldSeq);
      if (held.size === 0) this.held.delete(conversation);
    }
    this.last.set(conversation, seq);
    return { apply, gapAfter: this.held.has(conversation) ? seq : null };
  }
}

/** An error answer (HTTP or `error` frame) with its protocol code. */
export class ChorusError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/**
 * One user's connection to Chorus.
 *
 * Events (subscribe with `on(type, handler)`):
 * - `status` `{ state }`: `connecting`, `open`, `closed` (will retry), `paused`, `stopped`;
 * - `welcome` `{ user, session }`;
 * - `conversation` `{ id, last_seq, read_seq }` for each conversation at every sync;
 * - `baseline` `{ conversation, seq }`: tracking starts after `seq`; earlier messages are history
 *   (load them with `messages(…, { before_seq })`);
 * - `event` (a timeline event plus `origin`: `live` or `fill`), in seq order per conversation;
 * - `ack` (the ack frame), `read`, `typing`, `error` (error frames not tied to an outbox entry).
 */
export class ChorusClient {
  constructor({
    baseUrl,
    readUrl,
    token,
    WebSocketImpl = globalThis.WebSocket,
    fetchImpl = (...args) => globalThis.fetch(...args),
    timers = { setTimeout: (...a) => globalThis.setTimeout(...a), clearTimeout: (...a) => globalThis.clearTimeout(...a) },
    random = Math.random,
    backoff = { initialMs: 250, maxMs: 10_000 },
    ackTimeoutMs = 10_000,
  }) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    // history and search (GET); in the distributed mode the search nodes, elsewhere than the
    // ingest node that serves the WebSocket and takes writes
    this.readUrl = (readUrl || baseUrl).replace(/\/$/, "");
    this.token = token;
    this.WebSocketImpl = WebSocketImpl;
    this.fetchImpl = fetchImpl;
    this.timers = timers;
    this.random = random;
    this.backoff = backoff;
    this.ackTimeoutMs = ackTimeoutMs;
    this.tracker = new SeqTracker();
    this.handlers = new Map();
    /** client message id → { frame, resolve, reject, timer } until acked or refused */
    this.outbox = new Map();
    /** conversation → the latest read cursor not yet sent (sent on the next open) */
    this.unsentReads = new Map();
    /** conversation → the running fill (one at a time per conversation) */
    this.fills = new Map();
    this.socket = null;
    this.state = "idle";
    this.user = null;
    this.running = false;
    this.paused = false;
    this.attempt = 0;
    this.reconnectTimer = null;
    /** false until the first sync: conversations found then are baselined, later ones filled */
    this.synced = false;
    /** how many connections were opened after the first (for the page and the tests) */
    this.reconnects = 0;
  }

  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  emit(type, detail) {
    for (const handler of this.handlers.get(type) ?? []) handler(detail);
  }

  setState(state) {
    this.state = state;
    this.emit("status", { state });
  }

  start() {
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    this.cancelReconnect();
    this.closeSocket();
    this.setState("stopped");
  }

  /** The network is gone (e.g. the browser's `offline` event): drop the socket, do not retry. */
  pause() {
    this.paused = true;
    this.cancelReconnect();
    this.closeSocket();
    this.setState("paused");
  }

  /** The network is back: connect at once, with a fresh backoff. */
  resume() {
    if (!this.paused) return;
    this.paused = false;
    this.attempt = 0;
    if (this.running) this.connect();
  }

  cancelReconnect() {
    if (this.reconnectTimer !== null) this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  closeSocket() {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close();
    } catch {
      // already closed
    }
  }

  wsUrl() {
    return `${this.baseUrl.replace(/^http/, "ws")}/v1/ws?token=${encodeURIComponent(this.token)}`;
  }

  connect() {
    if (!this.running || this.paused || this.socket) return;
    this.cancelReconnect();
    this.setState("connecting");
    const socket = new this.WebSocketImpl(this.wsUrl());
    this.socket = socket;
    socket.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      this.handleFrame(frame);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.lost();
    };
    socket.onerror = () => {}; // a close follows
  }

  /** The connection is gone: retry after the backoff delay. */
  lost() {
    for (const entry of this.outbox.values()) this.clearAckTimer(entry);
    if (!this.running || this.paused) return;
    this.setState("closed");
    const delay = this.backoffDelay(this.attempt);
    this.attempt += 1;
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      this.reconnects += 1;
      this.connect();
    }, delay);
  }

  /** Exponential backoff capped at `maxMs`, with jitter in [50%, 100%] of the step. */
  backoffDelay(attempt) {
    const step = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** attempt);
    return Math.round(step * (0.5 + this.random() / 2));
  }

  handleFrame(frame) {
    switch (frame.type) {
      case "welcome":
        this.attempt = 0;
        this.user = frame.user;
        this.setState("open");
        this.emit("welcome", { user: frame.user, session: frame.session });
        for (const entry of this.outbox.values()) this.transmit(entry);
        for (const [conversation, seq] of this.unsentReads) this.read(conversation, seq);
        this.sync().catch((error) => this.emit("error", { code: error.code ?? "unavailable", message: String(error.message ?? error) }));
        break;
      case "event":
        this.receive(frame, "live");
        break;
      case "ack": {
        const entry = this.outbox.get(frame.id);
        if (entry) {
          this.clearAckTimer(entry);
          this.outbox.delete(frame.id);
          entry.resolve(frame);
        }
        this.emit("ack", frame);
        break;
      }
      case "error": {
        const entry = frame.id == null ? undefined : this.outbox.get(frame.id);
        if (!entry) {
          this.emit("error", frame);
          break;
        }
        this.clearAckTimer(entry);
        if (RETRYABLE_CODES.has(frame.code)) {
          entry.timer = this.timers.setTimeout(() => this.transmit(entry), this.backoffDelay(Math.min(entry.tries, 5)));
          break;
        }
        this.outbox.delete(frame.id);
        entry.reject(new ChorusError(frame.code, frame.message));
        break;
      }
      case "read":
      case "typing":
        this.emit(frame.type, frame);
        break;
      default:
        break; // pong, and frame types added later
    }
  }

  /** Offers a timeline event to the tracker; hands over what is in order; fills a hole. */
  receive(event, origin) {
    const { apply, gapAfter } = this.tracker.offer(event);
    for (const ready of apply) this.emit("event", { ...ready, origin });
    if (gapAfter !== null && origin === "live") this.fill(event.conversation);
  }

  /**
   * Fetches every event of `conversation` after the last one handed over, page by page, until
   * the server has no more. One fill per conversation runs at a time; a request for a fill while
   * one runs makes it go round once more.
   */
  fill(conversation) {
    const running = this.fills.get(conversation);
    if (running) {
      running.again = true;
      return running.promise;
    }
    const fill = { again: false, promise: null };
    fill.promise = (async () => {
      try {
        do {
          fill.again = false;
          for (;;) {
            const after = this.tracker.lastSeq(conversation);
            const path = `/v1/conversations/${encodeURIComponent(conversation)}/events?after_seq=${after}&limit=${FILL_PAGE}`;
            const { events } = await this.request("GET", path);
            for (const event of events) this.receive({ type: "event", ...event }, "fill");
            if (events.length < FILL_PAGE) break;
          }
        } while (fill.again);
      } finally {
        this.fills.delete(conversation);
      }
    })();
    this.fills.set(conversation, fill);
    return fill.promise;
  }

  /**
   * Compares every conversation's `last_seq` with what was handed over and fills what is
   * missing. At the first sync, conversations are baselined at their `last_seq` instead (their
   * past is history, loaded page by page by the application).
   */
  async sync() {
    const { conversations } = await this.request("GET", "/v1/conversations");
    const first = !this.synced;
    this.synced = true;
    const fills = [];
    for (const summary of conversations) {
      if (first && !this.tracker.known(summary.id)) {
        this.tracker.baseline(summary.id, summary.last_seq);
        this.emit("baseline", { conversation: summary.id, seq: summary.last_seq });
      }
      this.emit("conversation", summary);
      if (summary.last_seq > this.tracker.lastSeq(summary.id)) fills.push(this.fill(summary.id));
    }
    await Promise.all(fills);
  }

  /** Puts a client frame in the outbox; resolves with its ack, rejects with a refusal. */
  submit(frame) {
    const id = frame.id ?? newClientId();
    const withId = { ...frame, id };
    let resolve;
    let reject;
    const acked = new Promise((onAck, onRefusal) => {
      resolve = onAck;
      reject = onRefusal;
    });
    const entry = { frame: withId, resolve, reject, timer: null, tries: 0 };
    this.outbox.set(id, entry);
    if (this.state === "open") this.transmit(entry);
    return { id, acked };
  }

  transmit(entry) {
    this.clearAckTimer(entry);
    if (!this.outbox.has(entry.frame.id) || this.state !== "open" || !this.socket) return;
    entry.tries += 1;
    this.socket.send(JSON.stringify(entry.frame));
    entry.timer = this.timers.setTimeout(() => this.transmit(entry), this.ackTimeoutMs);
  }

  clearAckTimer(entry) {
    if (entry.timer !== null) this.timers.clearTimeout(entry.timer);
    entry.timer = null;
  }

  send(conversation, text, id) {
    return this.submit({ type: "send", id, conversation, text });
  }

  edit(conversation, seq, text) {
    return this.submit({ type: "edit", conversation, seq, text });
  }

  recall(conversation, seq) {
    return this.submit({ type: "recall", conversation, seq });
  }

  /** Moves my read cursor (no ack; the latest one is sent again after a reconnect if unsent). */
  read(conversation, seq) {
    if (this.state === "open" && this.socket) {
      this.socket.send(JSON.stringify({ type: "read", conversation, seq }));
      this.unsentReads.delete(conversation);
    } else {
      this.unsentReads.set(conversation, seq);
    }
  }

  /** Ephemeral: dropped when not connected. */
  typing(conversation) {
    if (this.state === "open" && this.socket) this.socket.send(JSON.stringify({ type: "typing", conversation }));
  }

  async request(method, path, body) {
    const base = method === "GET" ? this.readUrl : this.baseUrl;
    const response = await this.fetchImpl(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = answer.error ?? {};
      throw new ChorusError(error.code ?? "unavailable", error.message ?? `HTTP ${response.status}`, response.status);
    }
    return answer;
  }

  /** Messages as they stand now: `{ after_seq }` or `{ before_seq }`, and `limit`. */
  async messages(conversation, page = {}) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(page)) if (value !== undefined) query.set(name, String(value));
    const { messages } = await this.request("GET", `/v1/conversations/${encodeURIComponent(conversation)}/messages?${query}`);
    return messages;
  }

  async search(text, { conversation, limit = 20 } = {}) {
    const query = new URLSearchParams({ q: text, limit: String(limit) });
    if (conversation) query.set("conversation", conversation);
    const { hits } = await this.request("GET", `/v1/search?${query}`);
    return hits;
  }

  /** Creates a group owned by the caller (the caller becomes a member). */
  createGroup(id, members, title) {
    return this.request("POST", "/v1/conversations", { id, members, title });
  }
}

/** `POST /v1/dev/token` (embedded dev mode only). */
export async function devToken(baseUrl, user, device, fetchImpl = (...args) => globalThis.fetch(...args)) {
  const response = await fetchImpl(`${baseUrl.replace(/\/$/, "")}/v1/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(device ? { user, device } : { user }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = answer.error ?? {};
    throw new ChorusError(error.code ?? "unavailable", error.message ?? `HTTP ${response.status}`, response.status);
  }
  return answer.token;
}
