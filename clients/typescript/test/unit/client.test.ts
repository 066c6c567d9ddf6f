import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { readFileSync } from "node:fs";
import {
  backoffDelay,
  ClientFrameSchema,
  closeAction,
  CloseCode,
  ConnectionClosedError,
  ErrorCode,
  MemoryStore,
  TidingsClient,
  TidingsError,
  TimeoutError,
  type ClientOptions,
  type Gap,
  type Message,
} from "../../src/index.js";
import { FakeSocket, settle, socket } from "./fake.js";

function client(o: Partial<ClientOptions> = {}): TidingsClient {
  return new TidingsClient({
    url: "ws://test/ws",
    token: "t",
    WebSocket: FakeSocket,
    device: "d1",
    reconnect: { initialDelayMs: 100, maxDelayMs: 1000, jitter: 0 },
    ...o,
  });
}

function msg(conversationId: string, seq: number, text = `m${seq}`) {
  return { id: `${conversationId}-${seq}`, conversationId, seq: BigInt(seq), sender: "bob", content: new TextEncoder().encode(text) };
}

beforeEach(() => {
  FakeSocket.instances = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("reconnect schedule and policy", () => {
  it("backs off exponentially up to the cap, with jitter below the delay", () => {
    const o = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0 };
    expect([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, o))).toEqual([100, 200, 400, 800, 1000, 1000]);
    const j = { ...o, jitter: 0.5 };
    expect(backoffDelay(3, j, 0)).toBe(800);
    expect(backoffDelay(3, j, 0.999)).toBeGreaterThanOrEqual(400);
    expect(backoffDelay(3, j, 0.5)).toBe(600);
  });

  it("never retries auth failure, protocol violations, replacement, oversized frames or the session limit", () => {
    for (const c of [1000, 4002, 4004, 4005, 4006, 4009, 4011]) expect(closeAction(c)).toBe("stop");
    expect(closeAction(4003)).toBe("refresh");
    for (const c of [1001, 1006, 4001, 4007, 4008, 4010]) expect(closeAction(c)).toBe("retry");
  });

  it("reconnects after a drop on the backoff schedule, and stops on replacement", async () => {
    const c = client();
    const states: string[] = [];
    const closes: { code: number; willRetry: boolean; retryInMs?: number }[] = [];
    c.on("state", (s) => states.push(s));
    c.on("disconnected", (d) => closes.push(d));
    const connected = c.connect();
    (await socket(0)).login();
    await connected;
    (await socket(0)).serverClose(1006);
    expect(closes.at(-1)).toMatchObject({ code: 1006, willRetry: true, retryInMs: 100 });
    await vi.advanceTimersByTimeAsync(99);
    expect(FakeSocket.instances.length).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const s1 = await socket(1);
    s1.open();
    s1.serverClose(1006); // failed before login: the next delay doubles
    expect(closes.at(-1)).toMatchObject({ willRetry: true, retryInMs: 200 });
    await vi.advanceTimersByTimeAsync(200);
    const s2 = await socket(2);
    s2.login();
    await settle();
    expect(c.state).toBe("connected");
    s2.serverClose(CloseCode.CLOSE_REPLACED);
    expect(closes.at(-1)).toMatchObject({ code: 4006, willRetry: false });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.instances.length).toBe(3);
    expect(states).toEqual(["connecting", "connected", "disconnected", "connecting", "disconnected", "connecting", "connected", "disconnected"]);
  });

  it("asks the token callback again on token expiry, and stops on it with a fixed token", async () => {
    let n = 0;
    const c = client({ token: () => `token-${++n}` });
    const p = c.connect();
    const s0 = await socket(0);
    s0.login();
    await p;
    expect(s0.lastRequest("login").body.value).toMatchObject({ token: "token-1" });
    s0.serverClose(CloseCode.CLOSE_TOKEN_EXPIRED);
    await vi.advanceTimersByTimeAsync(0);
    const s1 = await socket(1);
    s1.open();
    expect(s1.lastRequest("login").body.value).toMatchObject({ token: "token-2" });

    const fixed = client();
    const closes: boolean[] = [];
    fixed.on("disconnected", (d) => closes.push(d.willRetry));
    const q = fixed.connect();
    const s2 = await socket(2);
    s2.login();
    await q;
    s2.serverClose(CloseCode.CLOSE_TOKEN_EXPIRED);
    expect(closes).toEqual([false]);
  });

  it("rejects connect on auth failure", async () => {
    const c = client();
    const p = c.connect();
    const s = await socket(0);
    s.open();
    s.serverClose(CloseCode.CLOSE_AUTH_FAILED);
    await expect(p).rejects.toBeInstanceOf(ConnectionClosedError);
  });
});

describe("requests", () => {
  it("times out a request without a reply", async () => {
    const c = client({ requestTimeoutMs: 500 });
    const p = c.connect();
    (await socket(0)).login();
    await p;
    const r = c.getConversation("x");
    const check = expect(r).rejects.toBeInstanceOf(TimeoutError);
    await vi.advanceTimersByTimeAsync(500);
    await check;
  });

  it("maps error replies to typed errors with the server's code", async () => {
    const c = client();
    const p = c.connect();
    const s = await socket(0);
    s.login();
    await p;
    const r = c.getConversation("nope");
    await settle();
    const req = s.lastRequest("getConversation");
    s.frame({ id: req.id, body: { case: "error", value: { code: ErrorCode.ERROR_CONVERSATION_NOT_FOUND, message: "not found" } } });
    const e = await r.catch((e: unknown) => e);
    expect(e).toBeInstanceOf(TidingsError);
    expect((e as TidingsError).code).toBe(ErrorCode.ERROR_CONVERSATION_NOT_FOUND);
    const limited = c.markRead("c", 1n);
    await settle();
    s.frame({ id: s.lastRequest("markRead").id, body: { case: "error", value: { code: ErrorCode.ERROR_RATE_LIMITED, message: "slow down", retryAfterMs: 250n } } });
    await expect(limited).rejects.toMatchObject({ code: ErrorCode.ERROR_RATE_LIMITED, retryAfterMs: 250 });
  });

  it("fails requests in flight when the connection drops", async () => {
    const c = client();
    const p = c.connect();
    const s = await socket(0);
    s.login();
    await p;
    const r = c.queryPresence("c");
    await settle();
    s.serverClose(1006);
    await expect(r).rejects.toBeInstanceOf(ConnectionClosedError);
  });

  it("has a method for every request in frames.proto", () => {
    const proto = readFileSync(new URL("../../../../proto/tidings/v1/frames.proto", import.meta.url), "utf8");
    const oneof = proto.split("message ClientFrame {")[1]!.split("\n}\n")[0]!;
    const fromProto = [...oneof.matchAll(/^\s+\w+ (\w+) = \d+;/gm)].map((m) => m[1]!).filter((f) => f !== "id");
    const camel = (s: string) => s.replace(/_(\w)/g, (_, c: string) => c.toUpperCase());
    const fromSchema = ClientFrameSchema.oneofs[0]!.fields.map((f) => f.localName);
    expect(fromProto.map(camel).sort()).toEqual([...fromSchema].sort());
    // Login is what connect() sends.
    const method: Record<string, string> = { login: "connect" };
    const c = client() as unknown as Record<string, unknown>;
    const missing = fromSchema.filter((r) => typeof c[method[r] ?? r] !== "function");
    expect(missing).toEqual([]);
    expect(fromSchema.length).toBeGreaterThan(30);
  });
});

describe("catch-up", () => {
  async function connectedWith(store: MemoryStore, lastSeq: Record<string, string>) {
    await store.update("d1", { reset: { userId: "alice" }, seqs: lastSeq, eventCursor: "7" });
    const c = client({ store });
    const got: Message[] = [];
    const gaps: Gap[] = [];
    c.on("message", (m) => got.push(m));
    c.on("gap", (g) => gaps.push(g));
    return { c, got, gaps };
  }

  it("fetches only the conversations whose last seq moved, delivers each message once and in order", async () => {
    const store = new MemoryStore();
    const seqs: Record<string, string> = {};
    const entries = [];
    for (let i = 0; i < 5000; i++) {
      seqs[`c${i}`] = "10";
      entries.push({ conversationId: `c${i}`, lastSeq: i === 42 ? 13n : 10n });
    }
    const { c, got } = await connectedWith(store, seqs);
    const p = c.connect();
    const s = await socket(0);
    s.open();
    expect(s.lastRequest("login").body.value).toMatchObject({ eventCursor: 7n, device: "d1" });
    s.login("alice", { case: "unreadSummary", value: { entries } });
    await p;
    await settle();
    expect(s.requests("syncMessages").length).toBe(1);
    const sync = s.lastRequest("syncMessages");
    expect(sync.body.value).toMatchObject({ conversationId: "c42", afterSeq: 10n });
    // A live message overtakes the catch-up: it is held, not delivered early.
    s.frame({ id: 0n, body: { case: "message", value: msg("c42", 14) } });
    expect(got).toEqual([]);
    s.frame({ id: sync.id, body: { case: "messagePage", value: { messages: [msg("c42", 11), msg("c42", 12), msg("c42", 13)] } } });
    await settle();
    // A duplicate of a delivered one is dropped.
    s.frame({ id: 0n, body: { case: "message", value: msg("c42", 13) } });
    s.frame({ id: 0n, body: { case: "message", value: msg("c42", 15) } });
    expect(got.map((m) => Number(m.seq))).toEqual([11, 12, 13, 14, 15]);
    await c.flush();
    expect((await store.load("d1"))!.lastSeq["c42"]).toBe("15");
  });

  it("fills a gap in live messages by seq, and reports what cannot be filled", async () => {
    const store = new MemoryStore();
    const { c, got, gaps } = await connectedWith(store, { a: "1" });
    const p = c.connect();
    const s = await socket(0);
    s.login();
    await p;
    s.frame({ id: 0n, body: { case: "message", value: msg("a", 2) } });
    s.frame({ id: 0n, body: { case: "message", value: msg("a", 6) } }); // 3..5 missed
    await settle();
    const sync = s.lastRequest("syncMessages");
    expect(sync.body.value).toMatchObject({ conversationId: "a", afterSeq: 2n });
    // 3 and 4 were deleted for good: the page skips them.
    s.frame({ id: sync.id, body: { case: "messagePage", value: { messages: [msg("a", 5), msg("a", 6)] } } });
    await settle();
    expect(got.map((m) => Number(m.seq))).toEqual([2, 5, 6]);
    expect(gaps).toEqual([{ conversationId: "a", afterSeq: 2n, beforeSeq: 5n, reason: "missing" }]);
  });

  it("starts new conversations at their head without fetching history", async () => {
    const c = client();
    const p = c.connect();
    const s = await socket(0);
    s.login("alice", { case: "unreadSummary", value: { entries: [{ conversationId: "x", lastSeq: 40n }] } });
    await p;
    await settle();
    expect(s.requests("syncMessages")).toEqual([]);
    expect(c.lastSeq("x")).toBe(40n);
    const got: bigint[] = [];
    c.on("message", (m) => got.push(m.seq));
    s.frame({ id: 0n, body: { case: "message", value: msg("x", 41) } });
    s.frame({ id: 0n, body: { case: "message", value: msg("fresh", 1) } });
    expect(got).toEqual([41n, 1n]);
  });

  it("does not deliver its own sends back, and does not see them as gaps", async () => {
    const c = client();
    const p = c.connect();
    const s = await socket(0);
    s.login("alice", { case: "unreadSummary", value: { entries: [{ conversationId: "x", lastSeq: 1n }] } });
    await p;
    const got: bigint[] = [];
    c.on("message", (m) => got.push(m.seq));
    const sent = c.send("x", "mine");
    await settle();
    const req = s.lastRequest("sendMessage");
    s.frame({ id: req.id, body: { case: "sendAck", value: { messageId: "x-2", seq: 2n } } });
    expect((await sent).seq).toBe(2n);
    s.frame({ id: 0n, body: { case: "message", value: msg("x", 3) } });
    await settle();
    expect(s.requests("syncMessages")).toEqual([]);
    expect(got).toEqual([3n]);
  });
});

describe("sends and persisted state", () => {
  it("retries an unacknowledged send after a reconnect with the same client message id", async () => {
    const c = client();
    const p = c.connect();
    const s0 = await socket(0);
    s0.login();
    await p;
    const sent = c.send("x", "hello");
    await settle();
    const first = s0.lastRequest("sendMessage");
    s0.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    const s1 = await socket(1);
    s1.login();
    await settle();
    const again = s1.lastRequest("sendMessage");
    expect(again.body.value).toMatchObject({ clientMessageId: (first.body.value as { clientMessageId: string }).clientMessageId });
    s1.frame({ id: again.id, body: { case: "sendAck", value: { messageId: "m", seq: 1n, duplicate: true } } });
    expect((await sent).duplicate).toBe(true);
    expect(c.pendingSends()).toEqual([]);
  });

  it("keeps unacknowledged sends and seqs in the store for the next page or process", async () => {
    const store = new MemoryStore();
    const a = client({ store });
    const p = a.connect();
    const s0 = await socket(0);
    s0.login("alice", { case: "unreadSummary", value: { entries: [{ conversationId: "x", lastSeq: 5n }] } });
    await p;
    void a.send("x", "unacked").catch(() => {});
    await settle();
    const cmid = (s0.lastRequest("sendMessage").body.value as { clientMessageId: string }).clientMessageId;
    await a.flush();
    a.close(); // the page goes away before the ack

    const saved = (await store.load("d1"))!;
    expect(saved.pending.map((q) => q.clientMessageId)).toEqual([cmid]);
    expect(saved.lastSeq).toEqual({ x: "5" });

    const b = client({ store });
    const acks: string[] = [];
    b.on("sent", (e) => acks.push(e.clientMessageId));
    const q = b.connect();
    const s1 = await socket(1);
    s1.login("alice", { case: "unreadSummary", value: { entries: [{ conversationId: "x", lastSeq: 6n }] } });
    await q;
    await settle();
    const resend = s1.lastRequest("sendMessage");
    expect(resend.body.value).toMatchObject({ clientMessageId: cmid, conversationId: "x" });
    s1.frame({ id: resend.id, body: { case: "sendAck", value: { messageId: "x-6", seq: 6n, duplicate: true } } });
    await settle();
    expect(acks).toEqual([cmid]);
    await b.flush();
    expect((await store.load("d1"))!.pending).toEqual([]);
  });

  it("starts afresh when another user logs in with the same store", async () => {
    const store = new MemoryStore();
    await store.update("d1", { reset: { userId: "alice" }, seqs: { x: "9" }, eventCursor: "3" });
    const c = client({ store });
    const p = c.connect();
    const s = await socket(0);
    s.login("bob");
    await p;
    await c.flush();
    expect(await store.load("d1")).toMatchObject({ userId: "bob", lastSeq: {}, eventCursor: "0" });
  });
});

describe("more policy", () => {
  it("connects again when the app asks after a stop by policy", async () => {
    const c = client();
    const p = c.connect();
    const s0 = await socket(0);
    s0.login();
    await p;
    s0.serverClose(CloseCode.CLOSE_REPLACED);
    await expect(c.ping()).rejects.toBeInstanceOf(ConnectionClosedError);
    const again = c.connect();
    const s1 = await socket(1);
    s1.login();
    expect((await again).userId).toBe("alice");
  });

  it("connect() during a scheduled retry opens one connection, not two", async () => {
    const c = client();
    const p = c.connect();
    (await socket(0)).login();
    await p;
    (await socket(0)).serverClose(1006);
    const again = c.connect();
    const s1 = await socket(1);
    s1.login();
    await again;
    await vi.advanceTimersByTimeAsync(10_000);
    expect(FakeSocket.instances.length).toBe(2);
    expect(c.state).toBe("connected");
  });

  it("refreshes the token before it expires, by the server's clock", async () => {
    const jwt = (expMs: number) => `h.${Buffer.from(JSON.stringify({ exp: expMs / 1000 })).toString("base64url")}.s`;
    // The server's clock is 10 minutes ahead of ours; tokens live 2 minutes.
    const serverNow = () => Date.now() + 600_000;
    const c = client({ token: () => jwt(serverNow() + 120_000), refreshBeforeExpiryMs: 60_000 });
    const p = c.connect();
    const s = await socket(0);
    s.open();
    s.frame({ id: s.lastRequest("login").id, body: { case: "loginOk", value: { userId: "alice", serverTime: BigInt(serverNow()) } } });
    s.frame({ id: 0n, body: { case: "unreadSummary", value: {} } });
    await p;
    await vi.advanceTimersByTimeAsync(59_000);
    expect(s.requests("refreshToken")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_000);
    const r = s.lastRequest("refreshToken");
    s.frame({ id: r.id, body: { case: "ok", value: {} } });
    await settle();
    // The next refresh is a minute later again, not at once and not after the new token's expiry.
    await vi.advanceTimersByTimeAsync(59_000);
    expect(s.requests("refreshToken").length).toBe(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.requests("refreshToken").length).toBe(2);
  });

  it("catches up a few conversations at a time", async () => {
    const store = new MemoryStore();
    const seqs: Record<string, string> = {};
    const entries = [];
    for (let i = 0; i < 10; i++) {
      seqs[`c${i}`] = "1";
      entries.push({ conversationId: `c${i}`, lastSeq: 2n });
    }
    await store.update("d1", { reset: { userId: "alice" }, seqs });
    const c = client({ store });
    const got: string[] = [];
    c.on("message", (m) => got.push(m.conversationId));
    const p = c.connect();
    const s = await socket(0);
    s.login("alice", { case: "unreadSummary", value: { entries } });
    await p;
    await settle();
    expect(s.requests("syncMessages").length).toBe(4);
    for (let answered = 0; answered < 10; answered++) {
      const req = s.requests("syncMessages")[answered]!;
      const conv = (req.body.value as { conversationId: string }).conversationId;
      s.frame({ id: req.id, body: { case: "messagePage", value: { messages: [msg(conv, 2)] } } });
      await settle();
      expect(s.requests("syncMessages").length).toBe(Math.min(10, answered + 5));
    }
    expect(got.sort()).toEqual(entries.map((e) => e.conversationId).sort());
  });

  it("pages on past the login summary, the next time only through what changed", async () => {
    const store = new MemoryStore();
    await store.update("d1", { reset: { userId: "alice" }, seqs: { c0: "1", c1: "1", c2: "1" } });
    const c = client({ store });
    const got: string[] = [];
    c.on("message", (m) => got.push(`${m.conversationId}:${m.seq}`));
    const p = c.connect();
    const s0 = await socket(0);
    s0.login("alice", { case: "unreadSummary", value: { entries: [{ conversationId: "c0", lastSeq: 1n }], listCursor: "cur" } });
    const firstLogin = (await p).serverTime;
    await settle();
    // The first time: from the summary's cursor, the whole rest of the list.
    const page = s0.lastRequest("listConversations");
    expect(page.body.value).toMatchObject({ cursor: "cur", updatedAfter: 0n, omitLastMessage: true });
    s0.frame({
      id: page.id,
      body: { case: "conversationList", value: { entries: [{ conversationId: "c1", lastSeq: 3n }, { conversationId: "c2", lastSeq: 1n }], hasMore: false } },
    });
    await settle();
    // Only c1 changed.
    const sync = s0.requests("syncMessages");
    expect(sync.map((r) => (r.body.value as { conversationId: string }).conversationId)).toEqual(["c1"]);
    s0.frame({ id: sync[0]!.id, body: { case: "messagePage", value: { messages: [msg("c1", 2), msg("c1", 3)] } } });
    await settle();
    expect(got).toEqual(["c1:2", "c1:3"]);
    await c.flush();
    expect((await store.load("d1"))!.listSyncedAt).toBe(firstLogin.toString());

    // The next login asks only for entries changed since the last one (a minute of margin).
    s0.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    const s1 = await socket(1);
    s1.login("alice", { case: "unreadSummary", value: { entries: [{ conversationId: "c0", lastSeq: 1n }], listCursor: "cur2" } });
    await settle();
    expect(s1.lastRequest("listConversations").body.value).toMatchObject({ cursor: "", updatedAfter: firstLogin - 60_000n });

    // From before the server's tombstone retention: the whole list again, from the summary.
    const late = s1.lastRequest("listConversations");
    s1.frame({ id: late.id, body: { case: "error", value: { code: ErrorCode.ERROR_WINDOW_EXPIRED, message: "list from 0" } } });
    await settle();
    const again = s1.lastRequest("listConversations");
    expect(again.id).not.toBe(late.id);
    expect(again.body.value).toMatchObject({ cursor: "cur2", updatedAfter: 0n });
    s1.frame({ id: again.id, body: { case: "conversationList", value: { entries: [{ conversationId: "c1", lastSeq: 3n }], hasMore: false } } });
    await settle();
    await c.flush();
    expect(BigInt((await store.load("d1"))!.listSyncedAt!)).toBeGreaterThan(firstLogin);
  });

  it("does not send another user's queued sends", async () => {
    const store = new MemoryStore();
    await store.update("d1", {
      reset: { userId: "alice" },
      putPending: [{ clientMessageId: "q", conversationId: "x", type: 0, content: new Uint8Array(), attributes: {}, mentions: [], wantReceipts: false, createdAt: 0 }],
    });
    const c = client({ store });
    const failed: string[] = [];
    c.on("sendFailed", (f) => failed.push(f.clientMessageId));
    const p = c.connect();
    const s = await socket(0);
    s.login("bob");
    await p;
    await settle();
    expect(s.requests("sendMessage")).toEqual([]);
    expect(failed).toEqual(["q"]);
    await c.flush();
    expect((await store.load("d1"))!.pending).toEqual([]);
  });
});
