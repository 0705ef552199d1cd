// Unit tests of the client library (node --test web/): seq tracking, gap filling, sync after a
// reconnect, backoff, resends with the same client message id, token renewal and expiry
// (close 4001), the paged conversation list (`next`), and attachments (upload, send, download
// URL). The WebSocket, fetch and the
// timers are fakes driven by the test, so every step is explicit and nothing waits on a clock.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ChorusClient, SeqTracker, dmId, tokenClaims, FILL_PAGE } from "./chorus-client.js";

const event = (conversation, seq, extra = {}) => ({
  type: "event",
  conversation,
  seq,
  kind: "message",
  sender: "alice",
  text: `m${seq}`,
  ...extra,
});
const seqs = (events) => events.map((handed) => handed.seq);

test("the tracker hands over events in order and drops duplicates", () => {
  const tracker = new SeqTracker();
  assert.deepEqual(seqs(tracker.offer(event("c", 1)).apply), [1]);
  assert.deepEqual(seqs(tracker.offer(event("c", 2)).apply), [2]);
  assert.deepEqual(tracker.offer(event("c", 2)), { apply: [], gapAfter: null });
  assert.deepEqual(tracker.offer(event("c", 1)), { apply: [], gapAfter: null });
  assert.equal(tracker.lastSeq("c"), 2);
  assert.equal(tracker.lastSeq("other"), 0, "conversations are tracked apart");
});

test("the tracker holds events behind a hole and releases them once it is filled", () => {
  const tracker = new SeqTracker();
  tracker.offer(event("c", 1));
  assert.deepEqual(tracker.offer(event("c", 4)), { apply: [], gapAfter: 1 });
  assert.deepEqual(tracker.offer(event("c", 5)), { apply: [], gapAfter: 1 });
  assert.equal(tracker.lastSeq("c"), 1, "nothing past the hole is handed over");
  const two = tracker.offer(event("c", 2));
  assert.deepEqual(seqs(two.apply), [2]);
  assert.equal(two.gapAfter, 2, "3 is still missing");
  const three = tracker.offer(event("c", 3));
  assert.deepEqual(seqs(three.apply), [3, 4, 5]);
  assert.equal(three.gapAfter, null);
  assert.equal(tracker.lastSeq("c"), 5);
  assert.deepEqual(tracker.offer(event("c", 4)).apply, [], "a late copy of a held event is a duplicate");
});

test("a baseline starts tracking after the conversation's history", () => {
  const tracker = new SeqTracker();
  tracker.baseline("c", 10);
  assert.deepEqual(tracker.offer(event("c", 10)).apply, []);
  assert.deepEqual(seqs(tracker.offer(event("c", 11)).apply), [11]);
  tracker.baseline("c", 3);
  assert.equal(tracker.lastSeq("c"), 11, "a baseline never moves a known conversation back");
});

test("dm ids put the two users in byte order", () => {
  assert.equal(dmId("bob", "alice"), "dm:alice:bob");
  assert.equal(dmId("alice", "bob"), "dm:alice:bob");
  assert.equal(dmId("张三", "bob"), "dm:bob:张三");
  assert.equal(dmId("ab", "a"), "dm:a:ab");
});

/** A server the fakes talk to: conversations with their timelines, and a log of requests. */
class FakeServer {
  constructor() {
    this.timelines = new Map();
    this.requests = [];
    this.sockets = [];
    /** the token HTTP requests must carry */
    this.token = "T";
    /** how many conversations one `GET /v1/conversations` answers (more follow with `next`) */
    this.conversationsPage = Infinity;
    /** when set, `(after) => body` answers `GET /v1/conversations` instead (a misbehaving server) */
    this.conversationsAnswer = null;
    /** attachment id → `{ asked, bytes, type }`: asked for, then put (`bytes`) */
    this.files = new Map();
    /** when set, `{ status, code, message }` refuses every `POST /v1/attachments` */
    this.attachmentRefusal = null;
  }

  /** `POST /v1/attachments` (an upload asked for) and `PUT /v1/attachments/{id}` (its bytes). */
  async attachment(init, pathname) {
    const answer = (status, body) => ({ ok: status < 300, status, json: async () => body });
    if (init.method === "POST") {
      assert.equal(init.headers["content-type"], "application/json");
      const asked = JSON.parse(init.body);
      if (this.attachmentRefusal) {
        const { status, code, message } = this.attachmentRefusal;
        return answer(status, { error: { code, message } });
      }
      const id = String(this.files.size + 1).padStart(32, "0");
      this.files.set(id, { asked, bytes: null, type: null });
      return answer(201, { id, upload_url: `/v1/attachments/${id}`, method: "PUT", expires_at: 1 });
    }
    assert.equal(init.method, "PUT");
    const file = this.files.get(pathname.split("/")[3]);
    if (!file) return answer(404, { error: { code: "not_found", message: "no such upload" } });
    file.bytes = new Uint8Array(await new Response(init.body).arrayBuffer());
    file.type = init.headers["content-type"];
    if (file.bytes.length !== file.asked.size) return answer(400, { error: { code: "bad_request", message: "short upload" } });
    return answer(200, { id: pathname.split("/")[3], name: file.asked.name, size: file.asked.size, type: file.asked.type });
  }

  append(conversation, count) {
    const timeline = this.timelines.get(conversation) ?? [];
    for (let index = 0; index < count; index++) timeline.push(event(conversation, timeline.length + 1));
    this.timelines.set(conversation, timeline);
    return timeline.at(-1);
  }

  fetch = async (url, init) => {
    const { pathname, searchParams } = new URL(url);
    this.requests.push(`${init.method} ${pathname}${searchParams.size ? `?${searchParams}` : ""}`);
    assert.equal(init.headers.authorization, `Bearer ${this.token}`);
    let body;
    if (pathname.startsWith("/v1/attachments")) return this.attachment(init, pathname);
    if (pathname === "/v1/conversations" && this.conversationsAnswer) {
      // a client that loops on this server fails here instead of spinning forever
      assert.ok(this.requests.length <= 100, "the client keeps asking for conversations");
      body = this.conversationsAnswer(searchParams.get("after"));
    } else if (pathname === "/v1/conversations") {
      const after = searchParams.get("after");
      const following = [...this.timelines.keys()].sort().filter((id) => after === null || id > after);
      const page = following.slice(0, this.conversationsPage);
      body = {
        conversations: page.map((id) => ({ id, last_seq: this.timelines.get(id).length, read_seq: 0 })),
        ...(following.length > page.length ? { next: page.at(-1) } : {}),
      };
    } else {
      const conversation = decodeURIComponent(pathname.split("/")[3]);
      const after = Number(searchParams.get("after_seq"));
      const limit = Number(searchParams.get("limit"));
      const events = (this.timelines.get(conversation) ?? [])
        .filter((stored) => stored.seq > after)
        .slice(0, limit)
        .map(({ type: _type, ...rest }) => rest);
      body = { events };
    }
    return { ok: true, status: 200, json: async () => body };
  };

  get socket() {
    return this.sockets.at(-1);
  }
}

function fakeWebSocket(server) {
  return class FakeSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.closed = false;
      server.sockets.push(this);
    }
    send(data) {
      assert.equal(this.closed, false, "never sends on a closed socket");
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.closed = true;
    }
    deliver(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop() {
      this.closeWith(1006);
    }
    closeWith(code) {
      this.closed = true;
      this.onclose?.({ code });
    }
  };
}

class FakeTimers {
  constructor() {
    this.pending = new Map();
    this.next = 1;
    this.delays = [];
  }
  setTimeout = (callback, delay) => {
    const id = this.next++;
    this.pending.set(id, { callback, delay });
    this.delays.push(delay);
    return id;
  };
  clearTimeout = (id) => {
    this.pending.delete(id);
  };
  /** Runs the timers set so far (not the ones they set). */
  fire() {
    const due = [...this.pending];
    this.pending.clear();
    for (const [, { callback }] of due) callback();
  }
}

/** Lets the client's awaited fetches settle. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

function setup(options = {}) {
  const server = new FakeServer();
  const timers = new FakeTimers();
  const client = new ChorusClient({
    baseUrl: "http://chorus.test",
    token: "T",
    ...options,
    WebSocketImpl: fakeWebSocket(server),
    fetchImpl: server.fetch,
    timers,
    random: () => 1,
    backoff: { initialMs: 100, maxMs: 1000 },
    ackTimeoutMs: 5000,
    ...options,
  });
  const handed = [];
  client.on("event", (handedEvent) => handed.push(handedEvent));
  return { server, timers, client, handed };
}

async function welcome(server) {
  server.socket.deliver({ type: "welcome", user: "bob", session: "s" });
  await settle();
}

test("the first sync baselines known conversations; later events are handed over live", async () => {
  const { server, client, handed } = setup();
  server.append("dm:alice:bob", 7);
  const baselines = [];
  client.on("baseline", (baseline) => baselines.push(baseline));
  client.start();
  assert.equal(server.socket.url, "ws://chorus.test/v1/ws?token=T");
  await welcome(server);
  assert.deepEqual(baselines, [{ conversation: "dm:alice:bob", seq: 7 }]);
  assert.deepEqual(server.requests, ["GET /v1/conversations"], "history is not fetched as events");
  server.socket.deliver(server.append("dm:alice:bob", 1));
  assert.deepEqual(seqs(handed), [8]);
  assert.equal(handed[0].origin, "live");
});

test("a hole in live events is filled from /events, in order, without duplicates", async () => {
  const { server, client, handed } = setup();
  client.start();
  await welcome(server);
  server.append("g:team", 5);
  server.socket.deliver(server.timelines.get("g:team")[0]);
  // 2..4 are lost on the way; 5 arrives, then 4 arrives late while the fill runs
  server.socket.deliver(server.timelines.get("g:team")[4]);
  assert.deepEqual(seqs(handed), [1], "5 waits for the hole");
  server.socket.deliver(server.timelines.get("g:team")[3]);
  await settle();
  assert.deepEqual(seqs(handed), [1, 2, 3, 4, 5]);
  assert.deepEqual(handed.map((handedEvent) => handedEvent.origin), ["live", "fill", "fill", "fill", "fill"]);
  assert.ok(server.requests.includes("GET /v1/conversations/g%3Ateam/events?after_seq=1&limit=1000"));
  server.socket.deliver(server.timelines.get("g:team")[2]);
  assert.deepEqual(seqs(handed), [1, 2, 3, 4, 5], "a copy arriving after the fill is dropped");
});

test("a fill pages through /events until the server has no more", async () => {
  const { server, client, handed } = setup();
  client.start();
  await welcome(server);
  const last = server.append("dm:alice:bob", FILL_PAGE + 3);
  server.socket.deliver(last);
  await settle();
  await settle();
  assert.equal(handed.length, FILL_PAGE + 3);
  assert.deepEqual(seqs(handed), Array.from({ length: FILL_PAGE + 3 }, (_, index) => index + 1));
  const fills = server.requests.filter((request) => request.includes("/events"));
  assert.deepEqual(fills, [
    "GET /v1/conversations/dm%3Aalice%3Abob/events?after_seq=0&limit=1000",
    `GET /v1/conversations/dm%3Aalice%3Abob/events?after_seq=${FILL_PAGE}&limit=1000`,
  ]);
});

test("after a lost connection it reconnects with backoff and fills what it missed", async () => {
  const { server, timers, client, handed } = setup();
  server.append("dm:alice:bob", 2);
  client.start();
  await welcome(server);
  server.socket.deliver(server.append("dm:alice:bob", 1)); // seq 3, live
  server.socket.drop();
  assert.equal(client.state, "closed");
  assert.deepEqual(timers.delays, [100], "first retry after the initial backoff");
  timers.fire();
  server.socket.drop(); // the node is still down
  timers.fire();
  server.socket.drop();
  assert.deepEqual(timers.delays, [100, 200, 400], "the backoff doubles");
  server.append("dm:alice:bob", 3); // 4..6 sent meanwhile
  server.append("g:new", 2); // a conversation that started meanwhile
  timers.fire();
  assert.equal(server.sockets.length, 4);
  await welcome(server);
  await settle();
  assert.deepEqual(
    handed.map((handedEvent) => `${handedEvent.conversation}#${handedEvent.seq}`),
    ["dm:alice:bob#3", "dm:alice:bob#4", "dm:alice:bob#5", "dm:alice:bob#6", "g:new#1", "g:new#2"],
  );
  assert.ok(server.requests.includes("GET /v1/conversations/dm%3Aalice%3Abob/events?after_seq=3&limit=1000"));
  assert.ok(server.requests.includes("GET /v1/conversations/g%3Anew/events?after_seq=0&limit=1000"), "new since the first sync: filled from the start");
  server.socket.drop();
  assert.equal(timers.delays.at(-1), 100, "welcome resets the backoff");
});

test("close 1012 (the node is restarting) reconnects at once and resends what is unacknowledged", async () => {
  const { server, timers, client } = setup();
  client.start();
  await welcome(server);
  const { id } = client.send("dm:alice:bob", "hi");
  server.socket.closeWith(1012);
  assert.equal(server.sockets.length, 2, "reconnected without waiting for a timer");
  assert.ok(!timers.delays.includes(100), "no backoff delay was taken");
  await welcome(server);
  assert.deepEqual(server.socket.sent.map((frame) => frame.id), [id], "resent on the new connection with the same id");
  server.socket.drop(); // a failure after it backs off as usual
  assert.equal(timers.delays.at(-1), 100);
});

test("the backoff is capped", () => {
  const { client } = setup();
  assert.equal(client.backoffDelay(0), 100);
  assert.equal(client.backoffDelay(3), 800);
  assert.equal(client.backoffDelay(10), 1000);
});

test("a send waits in the outbox and is resent with the same id until acked", async () => {
  const { server, timers, client } = setup();
  client.start();
  const { id, acked } = client.send("dm:alice:bob", "你好");
  assert.equal(server.socket.sent.length, 0, "not sent before welcome");
  await welcome(server);
  assert.deepEqual(server.socket.sent, [{ type: "send", id, conversation: "dm:alice:bob", text: "你好" }]);
  timers.fire(); // no ack within ackTimeoutMs: resend
  assert.deepEqual(server.socket.sent.map((frame) => frame.id), [id, id]);
  server.socket.drop();
  timers.fire(); // reconnect
  await welcome(server);
  assert.deepEqual(server.socket.sent, [{ type: "send", id, conversation: "dm:alice:bob", text: "你好" }], "resent on the new connection with the same id");
  server.socket.deliver({ type: "error", id, code: "unavailable", message: "try again" });
  timers.fire();
  assert.equal(server.socket.sent.length, 2, "resent after unavailable");
  server.socket.deliver({ type: "ack", id, conversation: "dm:alice:bob", seq: 1, event_id: "e" });
  assert.equal((await acked).seq, 1);
  assert.equal(client.outbox.size, 0);
  server.socket.deliver({ type: "ack", id, conversation: "dm:alice:bob", seq: 1, event_id: "e" });
  timers.fire();
  assert.equal(server.socket.sent.length, 2, "nothing resent once acked");
});

test("an accepted send (homed in another region) is not resent; its ack resolves it", async () => {
  const { server, timers, client } = setup();
  const accepted = [];
  client.on("accepted", (frame) => accepted.push(frame.id));
  client.start();
  await welcome(server);
  const { id, acked } = client.send("dm:alice:bob", "across regions");
  server.socket.deliver({ type: "accepted", id, conversation: "dm:alice:bob", home: "west" });
  assert.deepEqual(accepted, [id]);
  timers.fire();
  assert.equal(server.socket.sent.length, 1, "no resend while its home sequences it");
  server.socket.deliver({ type: "ack", id, conversation: "dm:alice:bob", seq: 7, event_id: "e" });
  assert.equal((await acked).seq, 7);
  assert.equal(client.outbox.size, 0);
});

test("a reply names the seq it answers, a forward its source, a reaction its message; they wait for their acks", async () => {
  const { server, timers, client } = setup();
  client.start();
  await welcome(server);
  const reply = client.send("g:team", "yes", undefined, { replyTo: 7 });
  const forward = client.forward("dm:alice:bob", "g:team", 7);
  assert.deepEqual(server.socket.sent, [
    { type: "send", id: reply.id, conversation: "g:team", text: "yes", reply_to: 7 },
    { type: "forward", id: forward.id, conversation: "dm:alice:bob", source: "g:team", seq: 7 },
  ]);
  timers.fire();
  assert.deepEqual(server.socket.sent.slice(2).map((frame) => frame.id), [reply.id, forward.id], "both resent until acked");
  server.socket.deliver({ type: "ack", id: forward.id, conversation: "dm:alice:bob", seq: 3, event_id: "e" });
  assert.equal((await forward.acked).seq, 3);
  const reaction = client.react("g:team", 7, "👍", false);
  assert.deepEqual(server.socket.sent.at(-1), { type: "react", id: reaction.id, conversation: "g:team", seq: 7, emoji: "👍", added: false });
  const frames = [
    client.addMembers("g:team", ["dave"]),
    client.removeMembers("g:team", ["carol"]),
    client.setRole("g:team", "bob", "admin"),
    client.rename("g:team", "新名字"),
    client.disband("g:team"),
    client.setRetention("g:team", 86400),
  ];
  assert.deepEqual(server.socket.sent.slice(-6), [
    { type: "add_members", id: frames[0].id, conversation: "g:team", members: ["dave"] },
    { type: "remove_members", id: frames[1].id, conversation: "g:team", members: ["carol"] },
    { type: "role", id: frames[2].id, conversation: "g:team", user: "bob", role: "admin" },
    { type: "rename", id: frames[3].id, conversation: "g:team", title: "新名字" },
    { type: "disband", id: frames[4].id, conversation: "g:team" },
    { type: "retention", id: frames[5].id, conversation: "g:team", ttl_seconds: 86400 },
  ]);
  const plain = client.send("g:team", "no reply");
  assert.equal(server.socket.sent.at(-1).reply_to, undefined, "a plain send carries no reply_to");
  assert.ok(plain.id);
});

test("a mute waits for the connection, and every mute frame is handed over", async () => {
  const { server, client } = setup();
  const mutes = [];
  client.on("mute", (frame) => mutes.push(frame));
  client.start();
  client.mute("g:team", true);
  assert.equal(server.socket.sent.length, 0, "not sent before welcome");
  await welcome(server);
  assert.deepEqual(server.socket.sent, [{ type: "mute", conversation: "g:team", muted: true }]);
  server.socket.deliver({ type: "mute", conversation: "g:team", muted: true });
  assert.deepEqual(mutes, [{ type: "mute", conversation: "g:team", muted: true }]);
});

test("a block waits for the connection, and every block frame is handed over", async () => {
  const { server, client } = setup();
  const blocks = [];
  client.on("block", (frame) => blocks.push(frame));
  client.start();
  client.block("mallory", true);
  await welcome(server);
  assert.deepEqual(server.socket.sent, [{ type: "block", user: "mallory", blocked: true }]);
  server.socket.deliver({ type: "block", conversation: "dm:alice:mallory", user: "mallory", blocked: true });
  assert.equal(blocks.length, 1);
});

test("a refused send is rejected with its code and not resent", async () => {
  const { server, timers, client } = setup();
  client.start();
  await welcome(server);
  const { id, acked } = client.send("g:secret", "hi");
  server.socket.deliver({ type: "error", id, code: "forbidden", message: "not a member" });
  await assert.rejects(acked, { code: "forbidden" });
  timers.fire();
  assert.equal(server.socket.sent.length, 1);
});

test("paused (offline) it does not reconnect until resumed", async () => {
  const { server, timers, client } = setup();
  client.start();
  await welcome(server);
  client.read("dm:alice:bob", 4);
  client.pause();
  assert.equal(server.socket.closed, true);
  client.read("dm:alice:bob", 6);
  timers.fire();
  assert.equal(server.sockets.length, 1, "no reconnect while offline");
  client.resume();
  assert.equal(server.sockets.length, 2);
  await welcome(server);
  assert.deepEqual(server.socket.sent, [{ type: "read", conversation: "dm:alice:bob", seq: 6 }], "the latest read cursor is sent once back");
});

test("reads go to the read URL (search nodes), the socket and writes to the serving node", async () => {
  const { server, client, origins } = splitSetup("http://search.test/");
  client.start();
  assert.equal(server.socket.url, "ws://ingest.test/v1/ws?token=T");
  await welcome(server);
  await client.createGroup("g:team", ["alice"], "Team").catch(() => {});
  assert.deepEqual(origins, ["GET http://search.test", "POST http://ingest.test"]);
});

/** An unsigned JWT with these claims (the client decodes, never verifies). */
const jwt = (claims) => `eyJhbGciOiJIUzI1NiJ9.${Buffer.from(JSON.stringify({ sub: "bob", ...claims })).toString("base64url")}.signature`;

test("a token's claims are decoded from its base64url payload", () => {
  assert.deepEqual(tokenClaims(jwt({ iat: 1000, exp: 1100, device: "张三的手机" })), { sub: "bob", iat: 1000, exp: 1100, device: "张三的手机" });
  assert.equal(tokenClaims("T"), null);
  assert.equal(tokenClaims("a.!!!.c"), null);
});

test("a token is renewed before its exp: an auth frame on the live socket, then the new token everywhere", async () => {
  const first = jwt({ iat: 1000, exp: 1100 });
  const second = jwt({ iat: 1090, exp: 1190 });
  const clock = { ms: 1_000_000 };
  const provided = [];
  const { server, timers, client } = setup({
    token: first,
    now: () => clock.ms,
    renewToken: async () => {
      provided.push(second);
      return second;
    },
  });
  server.token = first;
  const tokens = [];
  const renewals = [];
  client.on("token", (renewed) => tokens.push(renewed)).on("renewed", (renewed) => renewals.push(renewed));
  client.start();
  await welcome(server);
  assert.deepEqual(timers.delays, [90_000], "renewed 10 % of a 100 s lifetime before exp");
  assert.deepEqual(server.socket.sent, [], "nothing before the renewal is due");
  clock.ms = 1_090_000;
  server.token = second; // from now on only the new token is accepted over HTTP
  timers.fire();
  await settle();
  assert.deepEqual(provided, [second]);
  assert.deepEqual(server.socket.sent, [{ type: "auth", token: second }], "sent on the live socket");
  assert.equal(server.sockets.length, 1, "the session stays open");
  assert.deepEqual(tokens, [{ token: second, exp: 1190 }]);
  server.socket.deliver({ type: "auth_ok", exp: 1190 });
  assert.deepEqual(renewals, [{ exp: 1190 }]);
  assert.equal(timers.delays.at(-1), 90_000, "the next renewal is scheduled from the new token");
  await client.sync(); // the fake server asserts `Bearer <second>`
  assert.equal(server.requests.at(-1), "GET /v1/conversations");
  server.socket.drop();
  timers.fire();
  assert.equal(server.socket.url, `ws://chorus.test/v1/ws?token=${encodeURIComponent(second)}`, "reconnects with the new token");
});

test("close 4001 without a token provider reports the expiry and stops reconnecting", async () => {
  const token = jwt({ iat: 1000, exp: 1100 });
  const { server, timers, client } = setup({ token, now: () => 1_100_000 - 1 });
  server.token = token;
  const states = [];
  const expiries = [];
  client.on("status", ({ state }) => states.push(state)).on("expired", (expired) => expiries.push(expired));
  client.start();
  await welcome(server);
  assert.equal(timers.pending.size, 0, "no renewal timer without a provider");
  server.socket.closeWith(4001);
  assert.equal(client.state, "expired");
  assert.deepEqual(states.slice(-1), ["expired"]);
  assert.deepEqual(expiries, [{ message: "token expired, sign in again" }]);
  assert.equal(timers.pending.size, 0, "no reconnect is scheduled");
  timers.fire();
  client.pause();
  client.resume();
  assert.equal(server.sockets.length, 1, "never reconnects with the expired token");
  assert.equal(client.reconnects, 0);
});

test("close 4001 with a token provider renews and reconnects at once, without backoff", async () => {
  const first = jwt({ iat: 1000, exp: 1100 });
  const second = jwt({ iat: 1095, exp: 1195 });
  let calls = 0;
  // the local clock is behind the server's: the 4001 close alone says the token expired
  const { server, timers, client } = setup({
    token: first,
    now: () => 1_095_000,
    renewToken: async () => {
      calls += 1;
      return second;
    },
  });
  server.token = first;
  client.start();
  await welcome(server);
  server.token = second;
  server.socket.closeWith(4001);
  await settle();
  assert.equal(calls, 1, "renewed once");
  assert.equal(server.sockets.length, 2, "reconnected without waiting for a timer");
  assert.equal(server.socket.url, `ws://chorus.test/v1/ws?token=${encodeURIComponent(second)}`);
  assert.ok(!timers.delays.includes(100), "no backoff delay was taken");
  assert.deepEqual([...timers.pending.values()].map(({ delay }) => delay), [90_000], "only the next renewal is pending");
  await welcome(server); // the sync's HTTP request carries the new token (asserted by the fake)
  assert.equal(client.state, "open");
  assert.deepEqual(server.socket.sent, [], "no auth frame: the new socket was opened with the new token");
});

test("a failed renewal is reported and tried again with backoff", async () => {
  const first = jwt({ iat: 1000, exp: 1100 });
  const second = jwt({ iat: 1091, exp: 1191 });
  const answers = [Promise.reject(Object.assign(new Error("node unreachable"), { code: "unavailable" })), Promise.resolve(second)];
  answers[0].catch(() => {});
  const { server, timers, client } = setup({ token: first, now: () => 1_090_000, renewToken: () => answers.shift() });
  server.token = first;
  const errors = [];
  client.on("error", (error) => errors.push(error));
  client.start();
  await welcome(server);
  assert.deepEqual(timers.delays, [0], "the renewal is due at once");
  timers.fire();
  await settle();
  assert.deepEqual(errors, [{ code: "unavailable", message: "token renewal failed: node unreachable" }]);
  assert.deepEqual(server.socket.sent, []);
  assert.equal(timers.delays.at(-1), 100, "tried again after the backoff");
  timers.fire();
  await settle();
  assert.deepEqual(server.socket.sent, [{ type: "auth", token: second }]);
});

test("without a provider, a reconnect due after the token's exp stops instead of retrying", async () => {
  const token = jwt({ iat: 1000, exp: 1100 });
  const clock = { ms: 1_050_000 };
  const { server, timers, client } = setup({ token, now: () => clock.ms });
  server.token = token;
  client.start();
  await welcome(server);
  server.socket.drop(); // the network went away before the token expired
  assert.equal(client.state, "closed");
  clock.ms = 1_100_000;
  timers.fire();
  assert.equal(client.state, "expired", "the upgrade would be refused with 401");
  assert.equal(server.sockets.length, 1);
  assert.equal(timers.pending.size, 0);
});

test("the conversation list is read page by page, following next, at the first sync and after a reconnect", async () => {
  const { server, timers, client, handed } = setup();
  server.conversationsPage = 2;
  server.append("dm:alice:bob", 3);
  server.append("g:a", 1);
  server.append("g:b", 4); // on the second page
  const baselines = [];
  client.on("baseline", (baseline) => baselines.push(baseline));
  client.start();
  await welcome(server);
  assert.deepEqual(server.requests, ["GET /v1/conversations", "GET /v1/conversations?after=g%3Aa"]);
  assert.deepEqual(baselines, [
    { conversation: "dm:alice:bob", seq: 3 },
    { conversation: "g:a", seq: 1 },
    { conversation: "g:b", seq: 4 },
  ]);
  server.socket.deliver(server.append("g:b", 1));
  assert.deepEqual(seqs(handed), [5], "a conversation of the second page is tracked from its last_seq");

  server.socket.drop();
  server.append("g:b", 2); // 6..7 sent meanwhile, second page
  server.append("g:c", 2); // a conversation that started meanwhile, second page
  server.requests.length = 0;
  timers.fire();
  await welcome(server);
  await settle();
  assert.deepEqual(server.requests.slice(0, 2), ["GET /v1/conversations", "GET /v1/conversations?after=g%3Aa"]);
  assert.deepEqual(
    handed.map((handedEvent) => `${handedEvent.conversation}#${handedEvent.seq}`),
    ["g:b#5", "g:b#6", "g:b#7", "g:c#1", "g:c#2"],
    "the sync after the reconnect fills conversations of the second page",
  );
});

test("a server repeating the same next does not make the sync loop", { timeout: 5000 }, async () => {
  const { server, client } = setup();
  server.conversationsAnswer = (after) =>
    after === null
      ? { conversations: [{ id: "g:a", last_seq: 2, read_seq: 0 }], next: "g:a" }
      : { conversations: [{ id: "g:b", last_seq: 5, read_seq: 0 }], next: "g:a" };
  const errors = [];
  client.on("error", (error) => errors.push(error));
  const baselines = [];
  client.on("baseline", (baseline) => baselines.push(baseline));
  client.start();
  await welcome(server);
  assert.deepEqual(server.requests, ["GET /v1/conversations", "GET /v1/conversations?after=g%3Aa"]);
  assert.deepEqual(baselines.map((baseline) => baseline.conversation), ["g:a", "g:b"], "what was read is still used");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "incomplete");
  assert.match(errors[0].message, /does not advance/);
});

test("paging the conversation list stops after maxConversationPages pages", { timeout: 5000 }, async () => {
  const { server, client } = setup({ maxConversationPages: 3 });
  // a server whose list never ends: every page has one more id and a next that advances
  server.conversationsAnswer = (after) => {
    const id = `${after ?? "g:"}x`;
    return { conversations: [{ id, last_seq: 1, read_seq: 0 }], next: id };
  };
  const errors = [];
  client.on("error", (error) => errors.push(error));
  client.start();
  await welcome(server);
  assert.equal(server.requests.length, 3);
  assert.deepEqual(errors.map((error) => error.code), ["incomplete"]);
  assert.match(errors[0].message, /after 3 pages/);
});

/** A client whose reads go to the search nodes, with the origin of every HTTP request logged. */
function splitSetup(readUrl = "http://search.test") {
  const server = new FakeServer();
  const origins = [];
  const client = new ChorusClient({
    baseUrl: "http://ingest.test",
    readUrl,
    token: "T",
    WebSocketImpl: fakeWebSocket(server),
    fetchImpl: (url, init) => {
      origins.push(`${init.method} ${new URL(url).origin}`);
      return server.fetch(url, init);
    },
    timers: new FakeTimers(),
    random: () => 1,
  });
  return { server, client, origins };
}

test("a file is uploaded in two steps on the serving node, and a send carries its id", async () => {
  const { server, client, origins } = splitSetup();
  client.start();
  await welcome(server);
  const bytes = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]);
  const file = new File([bytes], "猫.png", { type: "image/png" });
  const id = await client.uploadAttachment("dm:alice:bob", file);
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.deepEqual(server.requests, ["GET /v1/conversations", "POST /v1/attachments", `PUT /v1/attachments/${id}`]);
  assert.deepEqual(origins.slice(1), ["POST http://ingest.test", "PUT http://ingest.test"], "uploads go to the serving node, not the read URL");
  const stored = server.files.get(id);
  assert.deepEqual(stored.asked, { conversation: "dm:alice:bob", name: "猫.png", size: 7, type: "image/png" });
  assert.deepEqual([...stored.bytes], [...bytes], "the bytes are put as they are");
  assert.equal(stored.type, "image/png");

  const { id: clientId } = client.send("dm:alice:bob", "", undefined, { attachment: id });
  const withText = client.send("dm:alice:bob", "look", undefined, { attachment: id, replyTo: 3 });
  assert.deepEqual(server.socket.sent, [
    { type: "send", id: clientId, conversation: "dm:alice:bob", text: "", attachment: id },
    { type: "send", id: withText.id, conversation: "dm:alice:bob", text: "look", reply_to: 3, attachment: id },
  ]);
  client.send("dm:alice:bob", "no file");
  assert.equal(server.socket.sent.at(-1).attachment, undefined, "a plain send carries no attachment");
});

test("a file without a type is uploaded as application/octet-stream", async () => {
  const { server, client } = splitSetup();
  const id = await client.uploadAttachment("g:team", new Blob(["hello"]));
  assert.deepEqual(server.files.get(id).asked, { conversation: "g:team", name: "file", size: 5, type: "application/octet-stream" });
  assert.equal(server.files.get(id).type, "application/octet-stream");
});

test("a refused upload rejects with the server's code and message, and puts no bytes", async () => {
  const { server, client } = splitSetup();
  server.attachmentRefusal = { status: 415, code: "unsupported_type", message: "text/html files are not accepted here" };
  const page = new File(["<p>hi</p>"], "page.html", { type: "text/html" });
  await assert.rejects(client.uploadAttachment("dm:alice:bob", page), { code: "unsupported_type", status: 415, message: "text/html files are not accepted here" });
  server.attachmentRefusal = { status: 413, code: "too_large", message: "the file is 9 bytes, the limit is 4" };
  await assert.rejects(client.uploadAttachment("dm:alice:bob", page), { code: "too_large", status: 413 });
  assert.deepEqual(server.requests, ["POST /v1/attachments", "POST /v1/attachments"], "nothing is put after a refusal");
  assert.equal(server.files.size, 0);
});

test("a failed put rejects with its code", async () => {
  const { server, client } = splitSetup();
  // a file that claims more bytes than it has: the server refuses the short upload
  class Shrunk extends Blob {
    get size() {
      return 10;
    }
  }
  await assert.rejects(client.uploadAttachment("g:team", new Shrunk(["short"], { type: "text/plain" })), { code: "bad_request", status: 400 });
  assert.deepEqual(server.requests.map((request) => request.split(" ")[0]), ["POST", "PUT"]);
});

test("the download URL is on the serving node and carries the current token", async () => {
  const { client } = splitSetup();
  assert.equal(client.attachmentUrl("0123abcd"), "http://ingest.test/v1/attachments/0123abcd?token=T");
  client.token = "a.b+c/d=";
  assert.equal(client.attachmentUrl("0123abcd"), "http://ingest.test/v1/attachments/0123abcd?token=a.b%2Bc%2Fd%3D", "a renewed token is used, escaped");
});
