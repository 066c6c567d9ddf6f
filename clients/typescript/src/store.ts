/**
 * Catch-up state: what the client has delivered (the last seq per conversation, the event
 * cursor) and the sends the server has not acknowledged yet. Kept in a pluggable store so a
 * page reload or a restarted process neither refetches everything nor misses anything, and
 * retries its unacknowledged sends (idempotently, by client message id).
 *
 * Seqs and cursors are decimal strings, so any store can keep them (JSON has no 64-bit
 * integers).
 */

/** A send the server has not acknowledged yet. */
export interface PendingSend {
  clientMessageId: string;
  conversationId: string;
  type: number;
  content: Uint8Array;
  attributes: Record<string, string>;
  mentions: string[];
  /** Mentions every member (absent in sends stored by older versions: false). */
  mentionAll?: boolean;
  wantReceipts: boolean;
  /** When it was first sent (ms, local clock). */
  createdAt: number;
}

export interface CatchUpState {
  /** The user the state belongs to; a login as another user starts afresh. */
  userId: string;
  /** The last conversation event processed (`Login.event_cursor`). */
  eventCursor: string;
  /** The last seq delivered, per conversation id. */
  lastSeq: Record<string, string>;
  pending: PendingSend[];
  /**
   * The server time (ms) of the last login whose catch-up went through the whole list: the
   * next one pages on past the unread summary only through entries changed after it.
   */
  listSyncedAt?: string;
}

/** One change to the state, applied atomically. */
export interface StateChange {
  /** Start afresh for this user (drops everything else first). */
  reset?: { userId: string };
  eventCursor?: string;
  listSyncedAt?: string;
  /** New last seqs; `null` forgets a conversation. */
  seqs?: Record<string, string | null>;
  putPending?: PendingSend[];
  deletePending?: string[];
}

/** Where catch-up state lives. `key` names one client's state (see `ClientOptions.storeKey`). */
export interface CatchUpStore {
  load(key: string): Promise<CatchUpState | undefined>;
  update(key: string, change: StateChange): Promise<void>;
}

/** Applies a change to a state (a new object; `state` is not modified). */
export function applyChange(state: CatchUpState | undefined, change: StateChange): CatchUpState {
  let s: CatchUpState = change.reset
    ? { userId: change.reset.userId, eventCursor: "0", lastSeq: {}, pending: [] }
    : state
      ? { ...state, lastSeq: { ...state.lastSeq }, pending: [...state.pending] }
      : { userId: "", eventCursor: "0", lastSeq: {}, pending: [] };
  if (change.eventCursor !== undefined) s.eventCursor = change.eventCursor;
  if (change.listSyncedAt !== undefined) s.listSyncedAt = change.listSyncedAt;
  for (const [conv, seq] of Object.entries(change.seqs ?? {})) {
    if (seq === null) delete s.lastSeq[conv];
    else s.lastSeq[conv] = seq;
  }
  if (change.deletePending?.length) {
    const gone = new Set(change.deletePending);
    s.pending = s.pending.filter((p) => !gone.has(p.clientMessageId));
  }
  for (const p of change.putPending ?? []) {
    s.pending = s.pending.filter((q) => q.clientMessageId !== p.clientMessageId);
    s.pending.push(p);
  }
  return s;
}

/** The default store: in memory, so it lasts as long as the page or process. */
export class MemoryStore implements CatchUpStore {
  #states = new Map<string, CatchUpState>();

  async load(key: string): Promise<CatchUpState | undefined> {
    const s = this.#states.get(key);
    return s && applyChange(s, {});
  }

  async update(key: string, change: StateChange): Promise<void> {
    this.#states.set(key, applyChange(this.#states.get(key), change));
  }
}
