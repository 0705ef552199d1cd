// Chorus client library: the reference for how a client uses the protocol (
// docs/protocol.md). Plain ES module, no dependencies; runs in browsers and in Node (the unit
// tests inject a WebSocket, fetch and timers).
//
// What it guarantees to the application:
// - timeline events are handed over once each, in seq order per conversation, with no holes:
//   a hole (an event whose seq is beyond last + 1) is filled from
//   `GET /v1/conversations/{id}/events?after_seq=<last>` before anything after it is handed over;
//   duplicates (seq <= last) are dropped;
// - after every (re)connect the client asks `GET /v1/conversations` and fills every conversation
//   whose `last_seq` is past what it has seen, so nothing sent while it was away is missed; the
//   list is paged, and the client follows `next` (`?after=<next>`) until the last page, so a user
//   with more conversations than one page gets all of them; the paging is bounded: it stops when
//   `next` does not advance (not after the cursor just used, in byte order) or after
//   `maxConversationPages` pages, and reports that as an `error` event (code `incomplete`);
// - a send, edit or recall stays in the outbox until its ack arrives; it is sent again, with the
//   same client message id (so the server acks it once and never stores it twice), after a
//   reconnect, after no answer within `ackTimeoutMs`, or after `unavailable`/`rate_limited`;
// - a lost connection is retried with exponential backoff (with jitter), reset by `welcome`; a
//   close with 1012 (the node is restarting and has written the acks it owed) reconnects at once,
//   without backoff: the load balancer sends the new connection to another node;
// - with a token provider (`renewToken`), a session outlives its token: some margin before the
//   token's `exp` (10 % of its lifetime, at most 60 s, at least 5 s) a new token is fetched, sent on
//   the live session as an `auth` frame and used for every later connection and HTTP request; a
//   close with 4001 (token expired) renews and reconnects at once, without backoff;
// - without a provider, a 4001 close (or a reconnect due with a token already past its `exp`)
//   stops the client with state `expired` and an `expired` event, instead of retrying with a
//   token the server refuses.

/** Error codes after which a client frame is worth sending again (same id). */
const RETRYABLE_CODES = new Set(["unavailable", "rate_limited"]);
/** Page size of gap filling (`/events` serves at most 1000 per call). */
export const FILL_PAGE = 1000;
/** WebSocket close code: the session's token expired (docs/protocol.md). */
export const CLOSE_TOKEN_EXPIRED = 4001;
/** WebSocket close code: the node is restarting; reconnect at once (docs/protocol.md). */
export const CLOSE_SERVICE_RESTART = 1012;
/** What the application is told when the token expired and there is no way to renew it. */
const EXPIRED_MESSAGE = "token expired, sign in again";
/** The longest delay a timer takes (2^31 - 1 ms); a renewal further off is taken earlier. */
const LONGEST_TIMER_MS = 2_147_483_647;
/**
 * The most pages of `GET /v1/conversations` one sync reads: a million conversations at the
 * server's default page of 1000 (`limits.max_conversations_page`).
 */
export const MAX_CONVERSATION_PAGES = 1000;

/**
 * The claims of a JWT, decoded from its base64url payload without verifying anything (the
 * server does that); `null` when `token` is not a JWT with a JSON payload.
 */
export function tokenClaims(token) {
  try {
    const payload = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=");
    const bytes = Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Compares two strings by their UTF-8 bytes (the server's order of ids): < 0, 0 or > 0. */
export function byteOrder(textA, textB) {
  const encoder = new TextEncoder();
  const bytesA = encoder.encode(textA);
  const bytesB = encoder.encode(textB);
  let order = 0;
  for (let index = 0; index < Math.min(bytesA.length, bytesB.length) && order === 0; index++) {
    order = bytesA[index] - bytesB[index];
  }
  return order === 0 ? bytesA.length - bytesB.length : order;
}

/** The id of the direct conversation between two users: `dm:<a>:<b>`, ids in byte order. */
export function dmId(userA, userB) {
  return byteOrder(userA, userB) <= 0 ? `dm:${userA}:${userB}` : `dm:${userB}:${userA}`;
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
 * - `conversation` `{ id, last_seq, read_seq, unread, mentions, muted, blocked }` for each conversation at every sync
 *   (`unread`: messages of others after the user's read cursor, counted by the server;
 *   `mentions`: those of them that mention the user);
 * - `baseline` `{ conversation, seq }`: tracking starts after `seq`; earlier messages are history
 *   (load them with `messages(…, { before_seq })`);
 * - `event` (a timeline event plus `origin`: `live` or `fill`), in seq order per conversation;
 * - `mute` `{ conversation, muted }`: this user (on any device) muted or unmuted a conversation;
 * - `block` `{ conversation, user, blocked }`: this user (on any device) blocked or unblocked `user`;
 * - `ack` (the ack frame), `accepted` (a send forwarded to its conversation's home region: durable,
 *   its ack follows), `read`, `typing`, `error` (error frames not tied to an outbox entry,
 *   failed token renewals, and a conversation list cut short: code `incomplete`);
 * - `token` `{ token, exp }`: a renewed token, now used for everything (e.g. to keep it for a reload);
 * - `renewed` `{ exp }`: the live session took the renewed token (`auth_ok`);
 * - `expired` `{ message }`: the token expired and there is no provider; the client has stopped
 *   (state `expired`) and the user must sign in again.
 *
 * `renewToken` (optional): `async () => token`, a new token for the same user. `renewMargin`:
 * how long before `exp` to renew, as a fraction of the token's lifetime (`exp - iat`, or from
 * when the client got it) bounded by `maxMs` and `minMs`. `now`: the clock, in ms.
 * `maxConversationPages`: the most pages of `GET /v1/conversations` a sync reads.
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
    renewToken = null,
    renewMargin = { fraction: 0.1, maxMs: 60_000, minMs: 5_000 },
    now = () => Date.now(),
    maxConversationPages = MAX_CONVERSATION_PAGES,
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
    this.unsentMutes = new Map();
    this.unsentBlocks = new Map();
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
    this.renewToken = renewToken;
    this.renewMargin = renewMargin;
    this.now = now;
    /** the token the live session holds (the one it was opened with, or sent in `auth`) */
    this.sessionToken = null;
    /** when the client got `token` (ms), for the lifetime of a token without `iat` */
    this.tokenSince = now();
    /** the server closed with 4001: the current token is expired whatever the local clock says */
    this.tokenRefused = false;
    /** the running renewal (one at a time), resolving to whether it got a token */
    this.renewal = null;
    this.renewalTimer = null;
    /** renewals failed in a row (their retries back off) */
    this.renewalFailures = 0;
    this.maxConversationPages = maxConversationPages;
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
    this.scheduleRenewal();
    this.connect();
  }

  stop() {
    this.running = false;
    this.cancelReconnect();
    this.cancelRenewal();
    this.closeSocket();
    this.setState("stopped");
  }

  /** The token expired and cannot be renewed: stop, and tell the application. */
  expire() {
    this.running = false;
    this.cancelReconnect();
    this.cancelRenewal();
    this.closeSocket();
    this.setState("expired");
    this.emit("expired", { message: EXPIRED_MESSAGE });
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

  /** Whether the current token is past its `exp` (by this device's clock) or was refused as expired. */
  tokenExpired() {
    const exp = tokenClaims(this.token)?.exp;
    return this.tokenRefused || (Number.isFinite(exp) && exp * 1000 <= this.now());
  }

  /** Sets the timer that renews the token `renewMargin` before its `exp` (with a provider). */
  scheduleRenewal() {
    this.cancelRenewal();
    const claims = tokenClaims(this.token);
    if (!this.renewToken || !this.running || !Number.isFinite(claims?.exp)) return;
    const expiresMs = claims.exp * 1000;
    const issuedMs = Number.isFinite(claims.iat) ? claims.iat * 1000 : this.tokenSince;
    const { fraction, maxMs, minMs } = this.renewMargin;
    const marginMs = Math.max(minMs, Math.min(maxMs, (expiresMs - issuedMs) * fraction));
    const delay = Math.min(LONGEST_TIMER_MS, Math.max(0, expiresMs - marginMs - this.now()));
    this.renewalTimer = this.timers.setTimeout(() => {
      this.renewalTimer = null;
      this.renewOnTimer();
    }, delay);
  }

  cancelRenewal() {
    if (this.renewalTimer !== null) this.timers.clearTimeout(this.renewalTimer);
    this.renewalTimer = null;
  }

  /** A renewal due before `exp`; a failed one is tried again with backoff while it runs. */
  async renewOnTimer() {
    if ((await this.renew()) || !this.running) return;
    this.cancelRenewal();
    const delay = this.backoffDelay(this.renewalFailures - 1);
    this.renewalTimer = this.timers.setTimeout(() => {
      this.renewalTimer = null;
      this.renewOnTimer();
    }, delay);
  }

  /**
   * Gets a new token from the provider (one request at a time), uses it for later connections
   * and HTTP requests, sends it on the live session (`auth`) and schedules the next renewal.
   * Resolves to whether a token was obtained; a failure is reported as an `error` event.
   */
  renew() {
    if (this.renewal) return this.renewal;
    this.cancelRenewal();
    this.renewal = (async () => {
      try {
        const token = await this.renewToken();
        if (typeof token !== "string" || token === "") throw new Error("the token provider gave no token");
        this.token = token;
        this.tokenSince = this.now();
        this.tokenRefused = false;
        this.renewalFailures = 0;
        this.emit("token", { token, exp: tokenClaims(token)?.exp ?? null });
        this.sendAuth();
        this.scheduleRenewal();
        return true;
      } catch (error) {
        this.renewalFailures += 1;
        this.emit("error", { code: error.code ?? "unavailable", message: `token renewal failed: ${error.message ?? error}` });
        return false;
      } finally {
        this.renewal = null;
      }
    })();
    return this.renewal;
  }

  /** Hands the current token to the live session when it holds an older one. */
  sendAuth() {
    if (this.state !== "open" || !this.socket || this.sessionToken === this.token) return;
    this.socket.send(JSON.stringify({ type: "auth", token: this.token }));
    this.sessionToken = this.token;
  }

  wsUrl() {
    return `${this.baseUrl.replace(/^http/, "ws")}/v1/ws?token=${encodeURIComponent(this.token)}`;
  }

  connect() {
    if (!this.running || this.paused || this.socket) return;
    this.cancelReconnect();
    if (this.tokenExpired()) {
      // the upgrade would be refused with 401, which a browser only sees as a failed connection
      if (!this.renewToken) return this.expire();
      this.setState("connecting");
      this.renew().then((renewed) => (renewed ? this.connect() : this.retryLater()));
      return;
    }
    this.setState("connecting");
    const socket = new this.WebSocketImpl(this.wsUrl());
    this.socket = socket;
    this.sessionToken = this.token;
    socket.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      this.handleFrame(frame);
    };
    socket.onclose = (closed) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.lost(closed?.code);
    };
    socket.onerror = () => {}; // a close follows
  }

  /**
   * The connection is gone: after 4001 (token expired) renew and reconnect at once, or stop
   * without a provider; after 1012 (the node is restarting) reconnect at once; otherwise retry
   * after the backoff delay.
   */
  lost(code) {
    for (const entry of this.outbox.values()) this.clearAckTimer(entry);
    if (!this.running || this.paused) return;
    if (code === CLOSE_TOKEN_EXPIRED) {
      this.tokenRefused = true;
      if (!this.renewToken) return this.expire();
      this.reconnects += 1;
      this.connect(); // renews first: the token is refused
      return;
    }
    this.setState("closed");
    if (code === CLOSE_SERVICE_RESTART) {
      // the session had its welcome, which reset the backoff; a failed attempt backs off
      this.cancelReconnect();
      this.reconnects += 1;
      this.connect();
      return;
    }
    this.retryLater();
  }

  /** Connects again after the backoff delay. */
  retryLater() {
    if (!this.running || this.paused) return;
    this.cancelReconnect();
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
        this.sendAuth(); // a token renewed while this connection was opening
        for (const entry of this.outbox.values()) this.transmit(entry);
        for (const [conversation, seq] of this.unsentReads) this.read(conversation, seq);
        for (const [conversation, muted] of this.unsentMutes) this.mute(conversation, muted);
        for (const [user, blocked] of this.unsentBlocks) this.block(user, blocked);
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
      case "accepted": {
        // durable, waiting for its home region to sequence it (docs/protocol.md): no resends on
        // this connection; the ack follows, however long the link between regions takes
        const entry = this.outbox.get(frame.id);
        if (entry) {
          this.clearAckTimer(entry);
          entry.accepted = true;
        }
        this.emit("accepted", frame);
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
      case "auth_ok":
        this.emit("renewed", { exp: frame.exp });
        break;
      case "read":
      case "typing":
      case "mute":
      case "block":
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
    const conversations = await this.listConversations();
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

  /**
   * Every conversation of the user: `GET /v1/conversations`, then `?after=<next>` while the
   * answer has a `next`. Bounded: it stops, with an `error` event (code `incomplete`) and the
   * conversations read so far, when `next` does not advance (not after the cursor just used, in
   * byte order: a server repeating itself) or after `maxConversationPages` pages.
   */
  async listConversations() {
    const found = new Map();
    let after = null;
    for (let page = 0; page < this.maxConversationPages; page++) {
      const path = after === null ? "/v1/conversations" : `/v1/conversations?after=${encodeURIComponent(after)}`;
      const { conversations = [], next } = await this.request("GET", path);
      for (const summary of conversations) found.set(summary.id, summary);
      if (typeof next !== "string" || next === "") return [...found.values()];
      if (after !== null && byteOrder(next, after) <= 0) {
        this.emit("error", { code: "incomplete", message: `conversation list cut short: next ${JSON.stringify(next)} does not advance past ${JSON.stringify(after)}` });
        return [...found.values()];
      }
      after = next;
    }
    this.emit("error", { code: "incomplete", message: `conversation list cut short after ${this.maxConversationPages} pages` });
    return [...found.values()];
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

  /**
   * Sends a message; `replyTo`: the seq of the message it answers (same conversation);
   * `attachment`: the id of a file uploaded for this conversation (`uploadAttachment`), when
   * `text` may be empty.
   */
  send(conversation, text, id, { replyTo, attachment } = {}) {
    const frame = { type: "send", id, conversation, text };
    if (replyTo !== undefined && replyTo !== null) frame.reply_to = replyTo;
    if (attachment !== undefined && attachment !== null) frame.attachment = attachment;
    return this.submit(frame);
  }

  /**
   * Forwards message `seq` of `source` into `conversation`: a new message of mine that names its
   * origin (`forwarded_from`); acked like a send.
   */
  forward(conversation, source, seq) {
    return this.submit({ type: "forward", conversation, source, seq });
  }

  edit(conversation, seq, text) {
    return this.submit({ type: "edit", conversation, seq, text });
  }

  recall(conversation, seq) {
    return this.submit({ type: "recall", conversation, seq });
  }

  /** Adds members to a group (its owner and admins); acked like a send. */
  addMembers(conversation, members) {
    return this.submit({ type: "add_members", conversation, members });
  }

  /** Removes members from a group (its owner and admins; never the owner); acked like a send. */
  removeMembers(conversation, members) {
    return this.submit({ type: "remove_members", conversation, members });
  }

  /** Gives `user` the role `admin` or `member` (owner and admins), or `owner` (the owner hands over). */
  setRole(conversation, user, role) {
    return this.submit({ type: "role", conversation, user, role });
  }

  /** Renames a group (its owner and admins); acked like a send. */
  rename(conversation, title) {
    return this.submit({ type: "rename", conversation, title });
  }

  /**
   * Sets how long the conversation's messages live, in seconds (0: the node's default): a group's
   * owner, or either member of a direct conversation; acked like a send.
   */
  setRetention(conversation, ttlSeconds) {
    return this.submit({ type: "retention", conversation, ttl_seconds: ttlSeconds });
  }

  /** Ends a group (its owner): everyone is removed; acked like a send. */
  disband(conversation) {
    return this.submit({ type: "disband", conversation });
  }

  /** Leaves a group (its owner cannot); acked like a send (the leave takes a seq). */
  leave(conversation) {
    return this.submit({ type: "leave", conversation });
  }

  /** Adds (or takes back) my reaction `emoji` to message `seq`; acked like a send (it takes a seq). */
  react(conversation, seq, emoji, added = true) {
    return this.submit({ type: "react", conversation, seq, emoji, added });
  }

  /** Pins (or unpins) message `seq` for every member; acked like a send (the pin takes a seq). */
  pin(conversation, seq, pinned = true) {
    return this.submit({ type: "pin", conversation, seq, pinned });
  }

  /**
   * Sends a frame that states the user's latest choice about `key` (a read mark, a mute, a
   * block): now when connected, else the latest one per key goes out on the next connection.
   */
  sendLatest(unsent, key, value, frame) {
    if (this.state === "open" && this.socket) {
      this.socket.send(JSON.stringify(frame));
      unsent.delete(key);
    } else {
      unsent.set(key, value);
    }
  }

  /** Moves my read cursor (no ack; the latest one is sent again after a reconnect if unsent). */
  read(conversation, seq) {
    this.sendLatest(this.unsentReads, conversation, seq, { type: "read", conversation, seq });
  }

  /** Mutes (or unmutes) a conversation for this user; every device of theirs gets a `mute`. */
  mute(conversation, muted) {
    this.sendLatest(this.unsentMutes, conversation, muted, { type: "mute", conversation, muted });
  }

  /** Blocks (or unblocks) `user`: their direct messages to this user are refused (`blocked`). */
  block(user, blocked) {
    this.sendLatest(this.unsentBlocks, user, blocked, { type: "block", user, blocked });
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
    return answerOf(response);
  }

  /**
   * Uploads `file` (a `File` or `Blob`: its `name`, `size`, `type` and bytes) for
   * `conversation`, in two steps on the serving node: `POST /v1/attachments` asks for an upload
   * (refused at once when the file is too large, `too_large`, or of a type the node does not
   * take, `unsupported_type`), then the bytes go to its `upload_url`. Resolves to the
   * attachment's id, for `send(…, { attachment })`; a refusal rejects with a `ChorusError`
   * carrying the server's code and message. A file without a type is sent as
   * `application/octet-stream`.
   */
  async uploadAttachment(conversation, file) {
    const type = file.type || "application/octet-stream";
    const asked = await this.request("POST", "/v1/attachments", { conversation, name: file.name || "file", size: file.size, type });
    const target = /^https?:/.test(asked.upload_url) ? asked.upload_url : `${this.baseUrl}${asked.upload_url}`;
    const response = await this.fetchImpl(target, {
      method: asked.method ?? "PUT",
      headers: { authorization: `Bearer ${this.token}`, "content-type": type },
      body: file,
    });
    await answerOf(response);
    return asked.id;
  }

  /**
   * Where attachment `id` is downloaded from (the serving node), with the current token in the
   * query, so `<img src>` and `<a download>` work without a header. Ask again after a renewal.
   */
  attachmentUrl(id) {
    return `${this.baseUrl}/v1/attachments/${encodeURIComponent(id)}?token=${encodeURIComponent(this.token)}`;
  }

  /** Messages as they stand now: `{ after_seq }` or `{ before_seq }`, and `limit`. */
  async messages(conversation, page = {}) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(page)) if (value !== undefined) query.set(name, String(value));
    const { messages } = await this.request("GET", `/v1/conversations/${encodeURIComponent(conversation)}/messages?${query}`);
    return messages;
  }

  /** A group's members with their roles (`owner`, `admin`, `member`): owner, admins, then the others. */
  async members(conversation) {
    const { members } = await this.request("GET", `/v1/conversations/${encodeURIComponent(conversation)}/members`);
    return members;
  }

  /** The conversation's pinned messages, most recently pinned first. */
  async pins(conversation) {
    const { pins } = await this.request("GET", `/v1/conversations/${encodeURIComponent(conversation)}/pins`);
    return pins;
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

/** The JSON answer of an HTTP response, or a `ChorusError` with its code when it failed. */
async function answerOf(response) {
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = answer.error ?? {};
    throw new ChorusError(error.code ?? "unavailable", error.message ?? `HTTP ${response.status}`, response.status);
  }
  return answer;
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
