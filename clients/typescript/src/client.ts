import { create, fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ErrorCode,
  AckDeliveredSchema,
  AddMembersSchema,
  UnmuteMembersSchema,
  UnblockUserSchema,
  UnblockMembersSchema,
  TransferOwnershipSchema,
  SetProfileSchema,
  SetMuteAllSchema,
  SetMemberRoleSchema,
  MuteMembersSchema,
  ListMutedMembersSchema,
  ListBlockedUsersSchema,
  ListBlockedMembersSchema,
  GetProfilesSchema,
  BlockUserSchema,
  BlockMembersSchema,
  ClearWillSchema,
  ClientFrameSchema,
  CountMembersSchema,
  CreateConversationSchema,
  DeleteConversationSchema,
  DeleteListEntriesSchema,
  DeleteMessagesSchema,
  EditMessageSchema,
  FetchHistorySchema,
  GetConversationSchema,
  GetListEntrySchema,
  LeaveConversationSchema,
  JoinConversationSchema,
  ListConversationsSchema,
  ListMembersSchema,
  LoginSchema,
  LogoutSchema,
  MarkReadSchema,
  PingSchema,
  PinConversationSchema,
  QueryPresenceSchema,
  RecallMessageSchema,
  RefreshTokenSchema,
  RemoveMembersSchema,
  SendMessageSchema,
  ServerFrameSchema,
  SetEntryExtSchema,
  SetMutedSchema,
  SetWillSchema,
  SubscribePresenceSchema,
  SyncMessagesSchema,
  UnsubscribePresenceSchema,
  UpdateConversationSchema,
} from "./gen/tidings/v1/frames_pb.js";
import type {
  BlockedMemberList,
  BlockedUserList,
  ClientFrame,
  ConversationList,
  MutedMemberList,
  ProfileChanged,
  ListEntriesDeleted,
  ListEntryChanged,
  LoginOk,
  MemberList,
  MessagePage,
  MessageUpdated,
  MessagesDeleted,
  PresenceChange,
  ReadPosition,
  Receipt,
  SendAck,
  ServerFrame,
  UnreadSummary,
} from "./gen/tidings/v1/frames_pb.js";
import {
  ConversationEventKind,
  type Conversation,
  type ConversationEvent,
  type ListEntry,
  type Message,
  type Profile,
} from "./gen/tidings/v1/model_pb.js";
import { backoffDelay, closeAction, type BackoffOptions, type CloseAction } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ConnectionClosedError, TidingsError, TimeoutError } from "./errors.js";
import { defaultSocket, OPEN, type SocketFactory, type SocketLike } from "./socket.js";
import { MemoryStore, type CatchUpState, type CatchUpStore, type PendingSend, type StateChange } from "./store.js";

/** Where the connection stands. */
export type ConnectionState = "idle" | "connecting" | "connected" | "disconnected" | "closed";

/** A token, or a function that returns a fresh one (called at every connect and before expiry). */
export type TokenSource = string | (() => string | Promise<string>);

export interface ClientOptions {
  /** `ws://host:7400/ws` or `wss://…`. */
  url: string;
  token: TokenSource;
  /** A WebSocket constructor: defaults to the global `WebSocket` (browsers, Node 22+); in Node 20 pass `ws`'s. */
  WebSocket?: SocketFactory;
  /**
   * The device tag (`Login.device`). A newer session with the same tag replaces the older, so
   * the default is unique per browser tab (kept in sessionStorage across reloads of the tab) or
   * per client in Node. `""`: no tag.
   */
  device?: string;
  /** Catch-up state (default: in memory). `IndexedDbStore` keeps it across page loads. */
  store?: CatchUpStore;
  /** Names this client's state in the store. Default: the device tag. */
  storeKey?: string;
  /** Per-request timeout (ms). Default 10 000. */
  requestTimeoutMs?: number;
  /** How long a send may wait for its ack, across reconnects (ms). Default 120 000. */
  sendTimeoutMs?: number;
  reconnect?: BackoffOptions & {
    /** Turn automatic reconnects off. */
    enabled?: boolean;
    /** Overrides the per-close-code policy. */
    policy?: (code: number) => CloseAction;
  };
  /** Catch up by seq after reconnects (default true). */
  catchUp?: boolean;
  /** Page size of catch-up requests (default 100). */
  syncPageSize?: number;
  /** Conversations caught up at once after a login (default 4). */
  catchUpConcurrency?: number;
  /** With a token callback: refresh the session's token this long before it expires (ms). Default 60 000. */
  refreshBeforeExpiryMs?: number;
  /** Speak the JSON form (`tidings.v1.json`): readable frames in the browser's devtools. */
  json?: boolean;
}

/** A stretch of a conversation the client could not deliver: messages after `afterSeq` up to `beforeSeq` (exclusive, 0: unknown). */
export interface Gap {
  conversationId: string;
  afterSeq: bigint;
  beforeSeq: bigint;
  /** Why: the messages are gone (deleted, expired, purged), or the catch-up request failed. */
  reason: "missing" | "error";
  error?: unknown;
}

export interface ClientEvents {
  state: (state: ConnectionState) => void;
  connecting: (info: { attempt: number }) => void;
  connected: (loginOk: LoginOk) => void;
  disconnected: (info: { code: number; reason: string; willRetry: boolean; retryInMs?: number }) => void;
  /** Every message once, in seq order per conversation, live or caught up (transient ones: live only). */
  message: (m: Message) => void;
  conversationEvent: (e: ConversationEvent) => void;
  unreadSummary: (s: UnreadSummary) => void;
  readPosition: (r: ReadPosition) => void;
  receipt: (r: Receipt) => void;
  presence: (p: PresenceChange) => void;
  messageUpdated: (u: MessageUpdated) => void;
  listEntryChanged: (e: ListEntryChanged) => void;
  listEntriesDeleted: (e: ListEntriesDeleted) => void;
  messagesDeleted: (e: MessagesDeleted) => void;
  /** Someone who shares a conversation with this user (or this user, on another device) changed their profile. */
  profileChanged: (p: ProfileChanged) => void;
  /** Messages the client could not catch up on. */
  gap: (g: Gap) => void;
  /** More events were pending at login than the server keeps: refetch what matters. */
  eventsTruncated: () => void;
  /** A send restored from the store (a previous page or process) was acknowledged. */
  sent: (info: { clientMessageId: string; conversationId: string; ack: SendAck }) => void;
  /** A send restored from the store was refused by the server. */
  sendFailed: (info: { clientMessageId: string; conversationId: string; error: unknown }) => void;
  /** A token refresh or catch-up step failed (the client carries on). */
  error: (e: unknown) => void;
}

type ReqCase = NonNullable<ClientFrame["body"]["case"]>;
type ReqValue<K extends ReqCase> = Extract<ClientFrame["body"], { case: K }>["value"];
type RepCase = NonNullable<ServerFrame["body"]["case"]>;
type RepValue<K extends RepCase> = Extract<ServerFrame["body"], { case: K }>["value"];

export interface SendOptions {
  type?: number;
  attributes?: Record<string, string>;
  mentions?: string[];
  /** Mention every member (@all). */
  mentionAll?: boolean;
  wantReceipts?: boolean;
  /** Delivered to online members only, never stored (no retry after a reconnect). */
  transient?: boolean;
  /** Your own id for idempotent retry (default: a random one). */
  clientMessageId?: string;
}

interface Inflight {
  resolve: (body: ServerFrame["body"]) => void;
  reject: (e: unknown) => void;
  name: string;
  timer: ReturnType<typeof setTimeout>;
}

interface SendWaiter {
  resolve: (ack: SendAck) => void;
  reject: (e: unknown) => void;
  timer: ReturnType<typeof setTimeout>;
}

const encoder = new TextEncoder();

/**
 * A tidings client: one logical session that reconnects by itself, catches up by seq, retries
 * unacknowledged sends and exposes every request of the native protocol as a method.
 */
export class TidingsClient extends Emitter<ClientEvents> {
  readonly device: string;
  #o: ClientOptions;
  #store: CatchUpStore;
  #storeKey: string;
  #Socket: SocketFactory;
  #ws: SocketLike | undefined;
  #state: ConnectionState = "idle";
  #nextId = 1n;
  #inflight = new Map<bigint, Inflight>();
  #waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  #attempt = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #token: string | undefined;
  /** Closed by the app (close, logout): for good. */
  #closedForGood = false;
  /** Stopped by the close policy (auth failure, replaced…): until the app calls connect() again. */
  #stopped = false;
  /** The server's clock minus ours (ms), from the last login. */
  #skew = 0;
  #loginOk: LoginOk | undefined;
  #loginId = 0n;

  // Catch-up state (mirrored into the store).
  #loaded: Promise<void> | undefined;
  #userId = "";
  #eventCursor = 0n;
  /** See `CatchUpState.listSyncedAt`. */
  #listSyncedAt = 0n;
  #lastSeq = new Map<string, bigint>();
  /** Seqs of this client's own sends, ahead of what was delivered: skipped, not delivered. */
  #own = new Map<string, Set<bigint>>();
  /** Live messages held while their conversation catches up. */
  #held = new Map<string, Message[]>();
  #syncing = new Set<string>();
  #pending = new Map<string, PendingSend>();
  #sendWaiters = new Map<string, SendWaiter>();
  /** Requests that live with the session, restored after a reconnect. */
  #presence = new Set<string>();
  #wills = new Map<string, MessageInitShape<typeof SetWillSchema>>();
  #storeQueue: Promise<void> = Promise.resolve();

  constructor(options: ClientOptions) {
    super();
    this.#o = options;
    const Socket = options.WebSocket ?? defaultSocket();
    if (!Socket) {
      throw new Error("no global WebSocket: pass one as `WebSocket` (in Node: `import WebSocket from \"ws\"`)");
    }
    this.#Socket = Socket;
    this.device = options.device ?? defaultDevice();
    this.#store = options.store ?? new MemoryStore();
    this.#storeKey = options.storeKey ?? (this.device || "default");
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The last login's reply (undefined before the first). */
  get session(): LoginOk | undefined {
    return this.#loginOk;
  }

  /** The last seq delivered in a conversation (undefined: not tracked). */
  lastSeq(conversationId: string): bigint | undefined {
    return this.#lastSeq.get(conversationId);
  }

  /** Sends not acknowledged yet (they are retried after a reconnect). */
  pendingSends(): PendingSend[] {
    return [...this.#pending.values()];
  }

  /** Connects and logs in; resolves once logged in. Reconnects by itself afterwards. */
  async connect(): Promise<LoginOk> {
    if (this.#closedForGood) throw new ConnectionClosedError("connect");
    if (this.#state === "connected" && this.#loginOk) return this.#loginOk;
    this.#stopped = false;
    const connected = this.once("connected");
    const failed = new Promise<never>((_, reject) => {
      const off = this.on("disconnected", (info) => {
        if (!info.willRetry) {
          off();
          reject(new ConnectionClosedError("connect", info.code));
        }
      });
      void connected.then(off);
    });
    if (this.#state === "idle" || this.#state === "disconnected") this.#open();
    const [ok] = await Promise.race([connected, failed]);
    return ok;
  }

  /** Logs out (the server closes the session) and stays disconnected. */
  async logout(): Promise<void> {
    this.#closedForGood = true;
    if (this.#state === "connected") {
      try {
        await this.#call("logout", create(LogoutSchema), "ok");
      } catch {
        // Closing anyway.
      }
    }
    this.close();
  }

  /** Closes the connection without logging out, and stops reconnecting. */
  close(): void {
    this.#closedForGood = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#refreshTimer);
    this.#ws?.close(1000, "client closed");
    this.#dropConnection(1000);
    this.#setState("closed");
    for (const w of this.#sendWaiters.values()) {
      clearTimeout(w.timer);
      w.reject(new ConnectionClosedError("sendMessage"));
    }
    this.#sendWaiters.clear();
  }

  /** Closes the socket as if the network dropped it: the client reconnects and catches up (for tests and "reconnect now" buttons). */
  reconnectNow(): void {
    const ws = this.#ws;
    if (!ws) return;
    this.#onClose(ws, 1006, "reconnect requested");
    try {
      ws.close(4000, "reconnect");
    } catch {
      // Already closed.
    }
  }

  // --- connection ---------------------------------------------------------------------------

  #setState(s: ConnectionState): void {
    if (this.#state === s) return;
    this.#state = s;
    this.emit("state", s);
  }

  #open(): void {
    // One connection at a time: a scheduled retry is now, and a socket still open goes.
    clearTimeout(this.#retryTimer);
    const old = this.#ws;
    if (old) {
      this.#ws = undefined;
      old.onopen = old.onmessage = old.onclose = old.onerror = null;
      old.close(1000, "reconnecting");
      this.#dropConnection(1000);
    }
    this.#setState("connecting");
    this.emit("connecting", { attempt: this.#attempt });
    void this.#openAsync().catch((e) => {
      this.emit("error", e);
      this.#scheduleRetry(1006, "connect failed", "retry");
    });
  }

  async #openAsync(): Promise<void> {
    this.#loaded ??= this.#loadState();
    await this.#loaded;
    const token = await this.#getToken();
    if (this.#closedForGood) return;
    const protocol = this.#o.json ? "tidings.v1.json" : "tidings.v1";
    const ws = new this.#Socket(this.#o.url, protocol);
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#loginId = this.#nextId++;
      this.#write(
        create(ClientFrameSchema, {
          id: this.#loginId,
          body: {
            case: "login",
            value: create(LoginSchema, { token, device: this.device, eventCursor: this.#eventCursor }),
          },
        }),
      );
    };
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      let frame: ServerFrame;
      try {
        frame =
          typeof ev.data === "string"
            ? fromJsonString(ServerFrameSchema, ev.data, { ignoreUnknownFields: true })
            : fromBinary(ServerFrameSchema, toBytes(ev.data));
      } catch (e) {
        this.emit("error", e);
        return;
      }
      this.#onFrame(frame);
    };
    ws.onclose = (ev) => this.#onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {
      // The close event follows and decides.
    };
  }

  async #getToken(): Promise<string> {
    const t = this.#o.token;
    this.#token = typeof t === "string" ? t : await t();
    return this.#token;
  }

  #write(frame: ClientFrame): void {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) throw new ConnectionClosedError(frame.body.case ?? "request");
    ws.send(this.#o.json ? toJsonString(ClientFrameSchema, frame) : toBinary(ClientFrameSchema, frame));
  }

  #onClose(ws: SocketLike, code: number, reason: string): void {
    if (this.#ws !== ws) return;
    this.#ws = undefined;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.#dropConnection(code);
    if (this.#closedForGood) {
      this.#setState("closed");
      return;
    }
    const enabled = this.#o.reconnect?.enabled ?? true;
    let action = (this.#o.reconnect?.policy ?? closeAction)(code);
    if (action === "refresh" && typeof this.#o.token === "string") action = "stop";
    if (!enabled) action = "stop";
    this.#scheduleRetry(code, reason, action);
  }

  #scheduleRetry(code: number, reason: string, action: CloseAction): void {
    this.#setState("disconnected");
    if (action === "stop") {
      this.#stopped = true;
      this.emit("disconnected", { code, reason, willRetry: false });
      for (const w of this.#sendWaiters.values()) {
        clearTimeout(w.timer);
        w.reject(new ConnectionClosedError("sendMessage", code));
      }
      this.#sendWaiters.clear();
      for (const w of this.#waiters.splice(0)) w.reject(new ConnectionClosedError("request", code));
      return;
    }
    const delay = action === "refresh" ? 0 : backoffDelay(this.#attempt, this.#o.reconnect);
    this.#attempt++;
    this.emit("disconnected", { code, reason, willRetry: true, retryInMs: delay });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  /** Fails the requests of a connection that is gone (sends stay pending for the retry). */
  #dropConnection(code: number): void {
    clearTimeout(this.#refreshTimer);
    for (const [id, r] of this.#inflight) {
      clearTimeout(r.timer);
      this.#inflight.delete(id);
      r.reject(new ConnectionClosedError(r.name, code));
    }
    this.#syncing.clear();
    this.#held.clear();
  }

  #onFrame(frame: ServerFrame): void {
    const body = frame.body;
    if (frame.id !== 0n) {
      if (frame.id === this.#loginId && body.case === "loginOk") {
        this.#onLogin(body.value);
        return;
      }
      const r = this.#inflight.get(frame.id);
      if (!r) return;
      this.#inflight.delete(frame.id);
      clearTimeout(r.timer);
      if (body.case === "error") r.reject(new TidingsError(body.value.code, body.value.message, Number(body.value.retryAfterMs)));
      else r.resolve(body);
      return;
    }
    switch (body.case) {
      case "message":
        this.#onMessage(body.value);
        break;
      case "conversationEvent":
        this.#onEvent(body.value);
        break;
      case "unreadSummary":
        this.emit("unreadSummary", body.value);
        void this.#afterLogin(body.value);
        break;
      case "readPosition":
        this.emit("readPosition", body.value);
        break;
      case "receipt":
        this.emit("receipt", body.value);
        break;
      case "presenceChange":
        this.emit("presence", body.value);
        break;
      case "messageUpdated":
        this.emit("messageUpdated", body.value);
        break;
      case "listEntryChanged":
        this.emit("listEntryChanged", body.value);
        break;
      case "listEntriesDeleted":
        this.emit("listEntriesDeleted", body.value);
        break;
      case "messagesDeleted":
        this.emit("messagesDeleted", body.value);
        break;
      case "profileChanged":
        this.emit("profileChanged", body.value);
        break;
      default:
        break;
    }
  }

  #onLogin(ok: LoginOk): void {
    this.#loginOk = ok;
    this.#skew = Number(ok.serverTime) - Date.now();
    if (ok.userId !== this.#userId) {
      // Another user's state (or none): start afresh. Sends queued before the first login are
      // this user's; sends left by another user are not sent as this one.
      const previous = this.#userId;
      this.#userId = ok.userId;
      this.#eventCursor = 0n;
      this.#listSyncedAt = 0n;
      this.#lastSeq.clear();
      this.#own.clear();
      this.#persist({ reset: { userId: ok.userId } });
      for (const p of [...this.#pending.values()]) {
        if (previous === "") {
          this.#persist({ putPending: [p] });
          continue;
        }
        this.#pending.delete(p.clientMessageId);
        this.emit("sendFailed", {
          clientMessageId: p.clientMessageId,
          conversationId: p.conversationId,
          error: new Error(`queued by ${previous}, not sent as ${ok.userId}`),
        });
      }
    }
    if (ok.eventsTruncated) this.emit("eventsTruncated");
    this.#attempt = 0;
    this.#setState("connected");
    this.#scheduleRefresh();
    this.emit("connected", ok);
    for (const w of this.#waiters.splice(0)) w.resolve();
  }

  /** After the welcome's summary: restore the session's subscriptions and wills, catch up, retry sends. */
  async #afterLogin(summary: UnreadSummary): Promise<void> {
    const ok = this.#loginOk;
    if (ok && ok.eventCursor > this.#eventCursor) {
      this.#eventCursor = ok.eventCursor;
      this.#persist({ eventCursor: ok.eventCursor.toString() });
    }
    const restore: Promise<unknown>[] = [];
    for (const conv of this.#presence) {
      restore.push(this.#call("subscribePresence", create(SubscribePresenceSchema, { conversationId: conv }), "ok"));
    }
    for (const will of this.#wills.values()) {
      restore.push(this.#call("setWill", create(SetWillSchema, will), "ok"));
    }
    for (const p of this.#pending.values()) restore.push(this.#resend(p));
    const login = this.#loginId;
    let listed = false;
    if (this.#o.catchUp ?? true) {
      const seqs: Record<string, string> = {};
      const changed: [string, bigint][] = [];
      const seen = new Set<string>();
      const consider = (e: { conversationId: string; lastSeq: bigint }) => {
        if (seen.has(e.conversationId)) return;
        seen.add(e.conversationId);
        const last = this.#lastSeq.get(e.conversationId);
        if (last === undefined) {
          // Not tracked yet: start at the conversation's head (its history is the app's to fetch).
          this.#lastSeq.set(e.conversationId, e.lastSeq);
          seqs[e.conversationId] = e.lastSeq.toString();
        } else if (e.lastSeq > last) {
          // Only what changed is fetched.
          changed.push([e.conversationId, e.lastSeq]);
        }
      };
      summary.entries.forEach(consider);
      if (summary.listCursor && ok) {
        // More conversations than the summary holds: page on, through those changed since the
        // last catch-up that did (all of them the first time).
        try {
          listed = await this.#pageChanged(summary.listCursor, consider);
        } catch (e) {
          if (!(e instanceof ConnectionClosedError)) this.emit("error", e);
        }
      } else {
        listed = true;
      }
      if (Object.keys(seqs).length) this.#persist({ seqs });
      // A few conversations at a time, so a long absence does not flood the connection.
      const workers = Math.min(changed.length, this.#o.catchUpConcurrency ?? 4);
      for (let w = 0; w < workers; w++) {
        restore.push(
          (async () => {
            for (let next = changed.shift(); next; next = changed.shift()) {
              if (this.#state !== "connected") return;
              await this.#sync(next[0], next[1]);
            }
          })(),
        );
      }
    }
    for (const r of await Promise.allSettled(restore)) {
      if (r.status === "rejected" && !(r.reason instanceof ConnectionClosedError)) this.emit("error", r.reason);
    }
    // Every changed conversation was fetched on this same connection: the next catch-up need
    // only look at what changes after this login.
    if (listed && ok && this.#state === "connected" && this.#loginId === login) this.#listSynced(ok.serverTime);
  }

  #listSynced(at: bigint): void {
    this.#listSyncedAt = at;
    this.#persist({ listSyncedAt: at.toString() });
  }

  /**
   * Pages through the list past the login summary, calling `consider` with each entry: from
   * the summary's cursor the first time, else only entries changed since the last catch-up
   * that went through (a minute of margin for clocks). A catch-up from before the server's
   * list tombstone retention (`ERROR_WINDOW_EXPIRED`) pages through the whole list instead.
   * Whether it went through to the end.
   */
  async #pageChanged(summaryCursor: string, consider: (e: ListEntry) => void): Promise<boolean> {
    const since = this.#listSyncedAt > 60_000n ? this.#listSyncedAt - 60_000n : 0n;
    try {
      return await this.#pageFrom(since, since > 0n ? "" : summaryCursor, consider);
    } catch (e) {
      if (since > 0n && e instanceof TidingsError && e.code === ErrorCode.ERROR_WINDOW_EXPIRED) {
        return this.#pageFrom(0n, summaryCursor, consider);
      }
      throw e;
    }
  }

  /** Pages through the entries changed after `since` (0: all), from `cursor`. */
  async #pageFrom(since: bigint, cursor: string, consider: (e: ListEntry) => void): Promise<boolean> {
    for (let pages = 0; pages < 10_000; pages++) {
      if (this.#state !== "connected") return false;
      const page = await this.listConversations({ cursor, updatedAfter: since, omitLastMessage: true });
      for (const e of page.entries) if (!e.deleted) consider(e);
      if (!page.hasMore || !page.nextCursor) return true;
      cursor = page.nextCursor;
    }
    return false;
  }

  #scheduleRefresh(): void {
    clearTimeout(this.#refreshTimer);
    if (typeof this.#o.token === "string" || !this.#token) return;
    const exp = jwtExpiry(this.#token);
    if (exp === undefined) return;
    const margin = this.#o.refreshBeforeExpiryMs ?? 60_000;
    const wait = Math.max(0, exp - (Date.now() + this.#skew) - margin);
    // Timers longer than 2^31 ms fire at once; a day is plenty (then it looks again).
    this.#refreshTimer = setTimeout(() => {
      void this.refreshToken().catch((e) => this.emit("error", e));
    }, Math.min(wait, 86_400_000));
  }

  // --- catch-up -----------------------------------------------------------------------------

  async #loadState(): Promise<void> {
    const s: CatchUpState | undefined = await this.#store.load(this.#storeKey);
    if (!s) return;
    this.#userId = s.userId;
    this.#eventCursor = BigInt(s.eventCursor);
    this.#listSyncedAt = BigInt(s.listSyncedAt ?? "0");
    for (const [c, seq] of Object.entries(s.lastSeq)) this.#lastSeq.set(c, BigInt(seq));
    for (const p of s.pending) this.#pending.set(p.clientMessageId, p);
  }

  /** Queues a store write; writes go out in order. */
  #persist(change: StateChange): void {
    this.#storeQueue = this.#storeQueue
      .then(() => this.#store.update(this.#storeKey, change))
      .catch((e) => this.emit("error", e));
  }

  /** Resolves once every store write queued so far is done. */
  flush(): Promise<void> {
    return this.#storeQueue;
  }

  #onMessage(m: Message): void {
    if (m.transient || m.seq === 0n) {
      this.emit("message", m);
      return;
    }
    const conv = m.conversationId;
    if (this.#syncing.has(conv)) {
      this.#hold(m);
      return;
    }
    let last = this.#lastSeq.get(conv);
    if (last === undefined) {
      // A conversation not tracked yet (new to this user): it starts here.
      last = m.seq - 1n;
      this.#lastSeq.set(conv, last);
    }
    last = this.#skipOwn(conv, last);
    if (m.seq <= last) return; // Already delivered.
    if (m.seq === last + 1n || !(this.#o.catchUp ?? true)) {
      this.#deliver(m);
      return;
    }
    // A gap: hold this one and fetch what lies between.
    this.#hold(m);
    void this.#sync(conv);
  }

  #hold(m: Message): void {
    const list = this.#held.get(m.conversationId) ?? [];
    list.push(m);
    this.#held.set(m.conversationId, list);
  }

  /** Moves past this client's own sends that are next in line. */
  #skipOwn(conv: string, last: bigint): bigint {
    const own = this.#own.get(conv);
    if (!own) return last;
    let moved = false;
    while (own.delete(last + 1n)) {
      last++;
      moved = true;
    }
    for (const s of own) if (s <= last) own.delete(s);
    if (moved) {
      this.#lastSeq.set(conv, last);
      this.#persist({ seqs: { [conv]: last.toString() } });
    }
    return last;
  }

  #deliver(m: Message): void {
    this.#lastSeq.set(m.conversationId, m.seq);
    this.#persist({ seqs: { [m.conversationId]: m.seq.toString() } });
    this.emit("message", m);
  }

  /**
   * Fetches and delivers a conversation's messages after the last delivered one, then the held
   * live ones. `head`: the conversation's last seq by the unread summary; messages up to it that
   * the server no longer returns (deleted one-way by this user, or gone) are not asked for again.
   */
  async #sync(conv: string, head = 0n): Promise<void> {
    if (this.#syncing.has(conv)) return;
    this.#syncing.add(conv);
    try {
      for (let rounds = 0, limited = 0; rounds < 1000; rounds++) {
        let last = this.#skipOwn(conv, this.#lastSeq.get(conv) ?? 0n);
        let page: MessagePage;
        try {
          page = await this.syncMessages(conv, last, this.#o.syncPageSize ?? 100);
        } catch (e) {
          if (e instanceof TidingsError && e.code === ErrorCode.ERROR_RATE_LIMITED && limited++ < 5) {
            await new Promise((r) => setTimeout(r, Math.max(100, e.retryAfterMs)));
            continue;
          }
          throw e;
        }
        for (const m of page.messages) {
          last = this.#skipOwn(conv, last);
          if (m.seq <= last) continue;
          if (m.seq > last + 1n) this.emit("gap", { conversationId: conv, afterSeq: last, beforeSeq: m.seq, reason: "missing" });
          this.#deliver(m);
          last = m.seq;
        }
        if (page.hasMore) continue;
        if (head > last) {
          last = head;
          this.#lastSeq.set(conv, last);
          this.#persist({ seqs: { [conv]: last.toString() } });
        }
        // Caught up to the server's head when it answered: what was held is newer or known.
        const held = (this.#held.get(conv) ?? []).sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
        this.#held.delete(conv);
        let gapAgain = false;
        for (const m of held) {
          last = this.#skipOwn(conv, last);
          if (m.seq <= last) continue;
          if (m.seq > last + 1n) {
            // Newer than the page: more arrived meanwhile; fetch again.
            this.#hold(m);
            gapAgain = true;
            continue;
          }
          this.#deliver(m);
          last = m.seq;
        }
        if (!gapAgain) return;
      }
    } catch (e) {
      if (e instanceof ConnectionClosedError) return; // The next login catches up.
      // The stretch cannot be fetched (the conversation is gone, or the user left it): say so,
      // and go on from the live messages held.
      const held = (this.#held.get(conv) ?? []).sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
      this.#held.delete(conv);
      const last = this.#lastSeq.get(conv) ?? 0n;
      this.emit("gap", { conversationId: conv, afterSeq: last, beforeSeq: held[0]?.seq ?? 0n, reason: "error", error: e });
      for (const m of held) if (m.seq > (this.#lastSeq.get(conv) ?? 0n)) this.#deliver(m);
      return;
    } finally {
      this.#syncing.delete(conv);
    }
  }

  #onEvent(e: ConversationEvent): void {
    if (e.userSeq > this.#eventCursor) {
      this.#eventCursor = e.userSeq;
      this.#persist({ eventCursor: e.userSeq.toString() });
    }
    const gone =
      e.kind === ConversationEventKind.DELETED ||
      e.kind === ConversationEventKind.EXPIRED ||
      (e.kind === ConversationEventKind.LEFT && e.by === this.#userId) ||
      (e.kind === ConversationEventKind.MEMBERS_REMOVED && e.members.includes(this.#userId));
    if (gone) {
      this.#lastSeq.delete(e.conversationId);
      this.#persist({ seqs: { [e.conversationId]: null } });
    } else if (e.conversation && !this.#lastSeq.has(e.conversationId)) {
      this.#track(e.conversation);
    }
    this.emit("conversationEvent", e);
  }

  /** Starts tracking a conversation at its current head. */
  #track(c: Conversation): void {
    if (this.#lastSeq.has(c.id)) return;
    this.#lastSeq.set(c.id, c.lastSeq);
    this.#persist({ seqs: { [c.id]: c.lastSeq.toString() } });
  }

  // --- requests -----------------------------------------------------------------------------

  /** Resolves when logged in (at once if connected); rejects when the client stopped. `cancel` stops waiting. */
  #whenConnected(): { promise: Promise<void>; cancel: () => void } {
    const none = () => {};
    if (this.#state === "connected") return { promise: Promise.resolve(), cancel: none };
    if (this.#closedForGood || this.#stopped) {
      return { promise: Promise.reject(new ConnectionClosedError("request")), cancel: none };
    }
    if (this.#state === "idle") this.#open();
    let waiter: { resolve: () => void; reject: (e: unknown) => void } | undefined;
    const promise = new Promise<void>((resolve, reject) => {
      waiter = { resolve, reject };
      this.#waiters.push(waiter);
    });
    return { promise, cancel: () => (this.#waiters = this.#waiters.filter((w) => w !== waiter)) };
  }

  async #call<K extends ReqCase, R extends RepCase>(
    req: K,
    value: ReqValue<K>,
    expect: R,
    timeoutMs = this.#o.requestTimeoutMs ?? 10_000,
  ): Promise<RepValue<R>> {
    const started = Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(req, timeoutMs)), timeoutMs);
    });
    const waiting = this.#whenConnected();
    try {
      await Promise.race([waiting.promise, timeout]);
    } finally {
      clearTimeout(timer);
      waiting.cancel();
    }
    const left = Math.max(0, timeoutMs - (Date.now() - started));
    const id = this.#nextId++;
    const body = await new Promise<ServerFrame["body"]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#inflight.delete(id);
        reject(new TimeoutError(req, timeoutMs));
      }, left);
      this.#inflight.set(id, { resolve, reject, name: req, timer });
      try {
        this.#write(create(ClientFrameSchema, { id, body: { case: req, value } as ClientFrame["body"] }));
      } catch (e) {
        clearTimeout(timer);
        this.#inflight.delete(id);
        reject(e);
      }
    });
    if (body.case !== expect) {
      throw new TidingsError(0, `unexpected reply ${String(body.case)} to ${req}`);
    }
    return body.value as RepValue<R>;
  }

  /** `Ping` → the server's time. */
  async ping(): Promise<bigint> {
    return (await this.#call("ping", create(PingSchema), "pong")).serverTime;
  }

  /** Replaces the session's token with a fresh one (by default from the token callback). */
  async refreshToken(token?: string): Promise<void> {
    const t = token ?? (await this.#getToken());
    this.#token = t;
    await this.#call("refreshToken", create(RefreshTokenSchema, { token: t }), "ok");
    this.#scheduleRefresh();
  }

  async createConversation(init: MessageInitShape<typeof CreateConversationSchema>): Promise<Conversation> {
    const c = (await this.#call("createConversation", create(CreateConversationSchema, init), "conversation")).conversation!;
    this.#track(c);
    return c;
  }

  async getConversation(conversationId: string): Promise<Conversation> {
    return (await this.#call("getConversation", create(GetConversationSchema, { conversationId }), "conversation")).conversation!;
  }

  async addMembers(conversationId: string, members: string[]): Promise<Conversation> {
    return (await this.#call("addMembers", create(AddMembersSchema, { conversationId, members }), "conversation")).conversation!;
  }

  async removeMembers(conversationId: string, members: string[]): Promise<Conversation> {
    return (await this.#call("removeMembers", create(RemoveMembersSchema, { conversationId, members }), "conversation")).conversation!;
  }

  /** Subscribes to a system conversation or joins a chat room (an open group too). */
  async joinConversation(conversationId: string): Promise<Conversation> {
    const c = (await this.#call("joinConversation", create(JoinConversationSchema, { conversationId }), "conversation")).conversation!;
    this.#track(c);
    return c;
  }

  async leaveConversation(conversationId: string): Promise<void> {
    await this.#call("leaveConversation", create(LeaveConversationSchema, { conversationId }), "ok");
    this.#lastSeq.delete(conversationId);
    this.#persist({ seqs: { [conversationId]: null } });
  }

  async updateConversation(init: MessageInitShape<typeof UpdateConversationSchema>): Promise<Conversation> {
    return (await this.#call("updateConversation", create(UpdateConversationSchema, init), "conversation")).conversation!;
  }

  async setMuted(conversationId: string, muted: boolean): Promise<void> {
    await this.#call("setMuted", create(SetMutedSchema, { conversationId, muted }), "ok");
  }

  async listMembers(conversationId: string, cursor = "", limit = 0): Promise<MemberList> {
    return this.#call("listMembers", create(ListMembersSchema, { conversationId, cursor, limit }), "memberList");
  }

  /** Every member, page by page. */
  async *members(conversationId: string, pageSize = 0): AsyncGenerator<string> {
    let cursor = "";
    for (;;) {
      const page = await this.listMembers(conversationId, cursor, pageSize);
      yield* page.members;
      if (!page.hasMore || !page.nextCursor) return;
      cursor = page.nextCursor;
    }
  }

  async countMembers(conversationId: string): Promise<number> {
    return (await this.#call("countMembers", create(CountMembersSchema, { conversationId }), "memberCount")).count;
  }

  /**
   * Sends a message; resolves with the ack once it is durable. A send whose connection drops is
   * sent again after the reconnect with the same client message id (the server stores it once),
   * and the unacknowledged sends are kept in the store, so a reloaded page or restarted process
   * sends them again too (their acks come as `sent` events).
   */
  async sendMessage(conversationId: string, content: string | Uint8Array, opts: SendOptions = {}): Promise<SendAck> {
    const bytes = typeof content === "string" ? encoder.encode(content) : content;
    const p: PendingSend = {
      clientMessageId: opts.clientMessageId ?? randomId(),
      conversationId,
      type: opts.type ?? 0,
      content: bytes,
      attributes: opts.attributes ?? {},
      mentions: opts.mentions ?? [],
      mentionAll: opts.mentionAll ?? false,
      wantReceipts: opts.wantReceipts ?? false,
      createdAt: Date.now(),
    };
    if (opts.transient) {
      return this.#call("sendMessage", create(SendMessageSchema, { ...sendInit(p), transient: true }), "sendAck");
    }
    this.#pending.set(p.clientMessageId, p);
    this.#persist({ putPending: [p] });
    // Durable in the store before the first byte goes out.
    await this.flush();
    const timeoutMs = this.#o.sendTimeoutMs ?? 120_000;
    const acked = new Promise<SendAck>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#sendWaiters.delete(p.clientMessageId);
        this.#forget(p);
        reject(new TimeoutError("sendMessage", timeoutMs));
      }, timeoutMs);
      this.#sendWaiters.set(p.clientMessageId, { resolve, reject, timer });
    });
    if (this.#state === "connected") void this.#resend(p);
    else if (this.#state === "idle") this.#open();
    return acked;
  }

  /** `sendMessage` under its short name. */
  send(conversationId: string, content: string | Uint8Array, opts: SendOptions = {}): Promise<SendAck> {
    return this.sendMessage(conversationId, content, opts);
  }

  #forget(p: PendingSend): void {
    this.#pending.delete(p.clientMessageId);
    this.#persist({ deletePending: [p.clientMessageId] });
  }

  /** Sends (again) one pending send on the current connection. */
  async #resend(p: PendingSend): Promise<void> {
    let ack: SendAck;
    try {
      ack = await this.#call("sendMessage", create(SendMessageSchema, sendInit(p)), "sendAck");
    } catch (e) {
      if (e instanceof ConnectionClosedError) return; // Retried after the reconnect.
      if (e instanceof TimeoutError) return; // Still pending: the next connection retries it.
      if (!this.#pending.has(p.clientMessageId)) return;
      this.#forget(p);
      const w = this.#sendWaiters.get(p.clientMessageId);
      this.#sendWaiters.delete(p.clientMessageId);
      if (w) {
        clearTimeout(w.timer);
        w.reject(e);
      } else {
        this.emit("sendFailed", { clientMessageId: p.clientMessageId, conversationId: p.conversationId, error: e });
      }
      return;
    }
    if (!this.#pending.has(p.clientMessageId)) return;
    this.#forget(p);
    if (ack.seq > 0n) {
      const own = this.#own.get(p.conversationId) ?? new Set();
      own.add(ack.seq);
      this.#own.set(p.conversationId, own);
      if (!this.#syncing.has(p.conversationId)) this.#skipOwn(p.conversationId, this.#lastSeq.get(p.conversationId) ?? ack.seq - 1n);
    }
    const w = this.#sendWaiters.get(p.clientMessageId);
    this.#sendWaiters.delete(p.clientMessageId);
    if (w) {
      clearTimeout(w.timer);
      w.resolve(ack);
    } else {
      this.emit("sent", { clientMessageId: p.clientMessageId, conversationId: p.conversationId, ack });
    }
  }

  async syncMessages(conversationId: string, afterSeq: bigint, limit = 0): Promise<MessagePage> {
    return this.#call("syncMessages", create(SyncMessagesSchema, { conversationId, afterSeq, limit }), "messagePage");
  }

  async fetchHistory(init: MessageInitShape<typeof FetchHistorySchema>): Promise<MessagePage> {
    return this.#call("fetchHistory", create(FetchHistorySchema, init), "messagePage");
  }

  /**
   * History as an async iterator, page by page along the request's direction (newest first by
   * default); messages come in the order walked.
   */
  async *history(init: MessageInitShape<typeof FetchHistorySchema>): AsyncGenerator<Message> {
    let cursor = "";
    const newestFirst = (init.direction ?? 0) === 0;
    for (;;) {
      const page = await this.fetchHistory({ ...init, cursor });
      const msgs = newestFirst ? [...page.messages].reverse() : page.messages;
      yield* msgs;
      if (!page.hasMore || !page.nextCursor) return;
      cursor = page.nextCursor;
    }
  }

  async markRead(conversationId: string, seq: bigint): Promise<void> {
    await this.#call("markRead", create(MarkReadSchema, { conversationId, seq }), "ok");
  }

  async deleteMessages(init: MessageInitShape<typeof DeleteMessagesSchema>): Promise<void> {
    await this.#call("deleteMessages", create(DeleteMessagesSchema, init), "ok");
  }

  async recallMessage(conversationId: string, messageId: string): Promise<Message> {
    return (await this.#call("recallMessage", create(RecallMessageSchema, { conversationId, messageId }), "messageReply")).message!;
  }

  async editMessage(init: MessageInitShape<typeof EditMessageSchema>): Promise<Message> {
    return (await this.#call("editMessage", create(EditMessageSchema, init), "messageReply")).message!;
  }

  async ackDelivered(conversationId: string, seq: bigint): Promise<void> {
    await this.#call("ackDelivered", create(AckDeliveredSchema, { conversationId, seq }), "ok");
  }

  async queryPresence(conversationId: string): Promise<string[]> {
    return (await this.#call("queryPresence", create(QueryPresenceSchema, { conversationId }), "presence")).online;
  }

  /** Presence pushes for a conversation's members; renewed after every reconnect. */
  async subscribePresence(conversationId: string): Promise<void> {
    await this.#call("subscribePresence", create(SubscribePresenceSchema, { conversationId }), "ok");
    this.#presence.add(conversationId);
  }

  async unsubscribePresence(conversationId: string): Promise<void> {
    this.#presence.delete(conversationId);
    await this.#call("unsubscribePresence", create(UnsubscribePresenceSchema, { conversationId }), "ok");
  }

  /** A will message, sent by the server if this connection ends abnormally; set again after every reconnect. */
  async setWill(init: MessageInitShape<typeof SetWillSchema>): Promise<void> {
    const will = create(SetWillSchema, init);
    await this.#call("setWill", will, "ok");
    this.#wills.set(will.conversationId, init);
  }

  async clearWill(conversationId: string): Promise<void> {
    this.#wills.delete(conversationId);
    await this.#call("clearWill", create(ClearWillSchema, { conversationId }), "ok");
  }

  async listConversations(init: MessageInitShape<typeof ListConversationsSchema> = {}): Promise<ConversationList> {
    return this.#call("listConversations", create(ListConversationsSchema, init), "conversationList");
  }

  /** The conversation list as an async iterator over its pages' entries. */
  async *conversations(init: MessageInitShape<typeof ListConversationsSchema> = {}): AsyncGenerator<ListEntry> {
    let cursor = "";
    for (;;) {
      const page = await this.listConversations({ ...init, cursor });
      yield* page.entries;
      if (!page.hasMore || !page.nextCursor) return;
      cursor = page.nextCursor;
    }
  }

  async getListEntry(conversationId: string, omitLastMessage = false): Promise<ListEntry> {
    return (await this.#call("getListEntry", create(GetListEntrySchema, { conversationId, omitLastMessage }), "listEntry")).entry!;
  }

  async setEntryExt(conversationId: string, ext: string): Promise<ListEntry> {
    return (await this.#call("setEntryExt", create(SetEntryExtSchema, { conversationId, ext }), "listEntry")).entry!;
  }

  async pinConversation(conversationId: string, pinned: boolean): Promise<ListEntry> {
    return (await this.#call("pinConversation", create(PinConversationSchema, { conversationId, pinned }), "listEntry")).entry!;
  }

  async deleteListEntries(conversationIds: string[], clearHistory = false): Promise<void> {
    await this.#call("deleteListEntries", create(DeleteListEntriesSchema, { conversationIds, clearHistory }), "ok");
  }

  async deleteConversation(conversationId: string, purgeMessages = false): Promise<void> {
    await this.#call("deleteConversation", create(DeleteConversationSchema, { conversationId, purgeMessages }), "ok");
  }
  // Groups: roles, muting and the blacklist (the role table is in the server's README).

  async setMemberRole(init: MessageInitShape<typeof SetMemberRoleSchema>): Promise<void> {
    await this.#call("setMemberRole", create(SetMemberRoleSchema, init), "ok");
  }

  async transferOwnership(conversationId: string, newOwner: string): Promise<Conversation> {
    const body = create(TransferOwnershipSchema, { conversationId, newOwner });
    return (await this.#call("transferOwnership", body, "conversation")).conversation!;
  }

  /** Mutes members for `durationSecs` (0: until lifted). */
  async muteMembers(conversationId: string, members: string[], durationSecs = 0): Promise<void> {
    const body = create(MuteMembersSchema, { conversationId, members, durationSecs: BigInt(durationSecs) });
    await this.#call("muteMembers", body, "ok");
  }

  async unmuteMembers(conversationId: string, members: string[]): Promise<void> {
    await this.#call("unmuteMembers", create(UnmuteMembersSchema, { conversationId, members }), "ok");
  }

  /** While on, only the owner and managers may send. */
  async setMuteAll(conversationId: string, muted: boolean): Promise<Conversation> {
    return (await this.#call("setMuteAll", create(SetMuteAllSchema, { conversationId, muted }), "conversation")).conversation!;
  }

  async listMutedMembers(conversationId: string, cursor = "", limit = 0): Promise<MutedMemberList> {
    const body = create(ListMutedMembersSchema, { conversationId, cursor, limit });
    return this.#call("listMutedMembers", body, "mutedMemberList");
  }

  /** Puts users on the group's blacklist; those who are members are removed. */
  async blockMembers(conversationId: string, members: string[]): Promise<Conversation> {
    return (await this.#call("blockMembers", create(BlockMembersSchema, { conversationId, members }), "conversation")).conversation!;
  }

  async unblockMembers(conversationId: string, members: string[]): Promise<void> {
    await this.#call("unblockMembers", create(UnblockMembersSchema, { conversationId, members }), "ok");
  }

  async listBlockedMembers(conversationId: string, cursor = "", limit = 0): Promise<BlockedMemberList> {
    const body = create(ListBlockedMembersSchema, { conversationId, cursor, limit });
    return this.#call("listBlockedMembers", body, "blockedMemberList");
  }

  // Blocking between users, and profiles.

  async blockUser(userId: string): Promise<void> {
    await this.#call("blockUser", create(BlockUserSchema, { userId }), "ok");
  }

  async unblockUser(userId: string): Promise<void> {
    await this.#call("unblockUser", create(UnblockUserSchema, { userId }), "ok");
  }

  async listBlockedUsers(cursor = "", limit = 0): Promise<BlockedUserList> {
    return this.#call("listBlockedUsers", create(ListBlockedUsersSchema, { cursor, limit }), "blockedUserList");
  }

  async setProfile(init: MessageInitShape<typeof SetProfileSchema>): Promise<Profile> {
    return this.#call("setProfile", create(SetProfileSchema, init), "profile");
  }

  async getProfiles(userIds: string[]): Promise<Profile[]> {
    return (await this.#call("getProfiles", create(GetProfilesSchema, { userIds }), "profileList")).profiles;
  }
}

function sendInit(p: PendingSend): MessageInitShape<typeof SendMessageSchema> {
  return {
    conversationId: p.conversationId,
    clientMessageId: p.clientMessageId,
    type: p.type,
    content: p.content,
    attributes: p.attributes,
    mentions: p.mentions,
    mentionAll: p.mentionAll ?? false,
    wantReceipts: p.wantReceipts,
  };
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("unexpected WebSocket message data");
}

/** A random id (crypto where there is one). */
export function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

/** A device tag unique per browser tab (kept across reloads of the tab), or per client elsewhere. */
function defaultDevice(): string {
  const key = "tidings.device";
  try {
    const s = (globalThis as { sessionStorage?: Storage }).sessionStorage;
    if (s) {
      let d = s.getItem(key);
      if (!d) {
        d = `web-${randomId().slice(0, 8)}`;
        s.setItem(key, d);
      }
      return d;
    }
  } catch {
    // No storage (privacy mode): a tag for this page only.
  }
  return `js-${randomId().slice(0, 8)}`;
}

/** A JWT's `exp`, in ms (undefined: not a JWT, or no `exp`). */
export function jwtExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
