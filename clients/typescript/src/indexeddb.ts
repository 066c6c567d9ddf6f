import type { CatchUpState, CatchUpStore, PendingSend, StateChange } from "./store.js";

/**
 * Catch-up state in IndexedDB, for browsers: it survives reloads and is shared by the tabs of
 * one origin (each client uses its own `storeKey`). Every change is one transaction; a change to
 * a few conversations writes only their records, so a user in thousands of conversations does
 * not rewrite them all.
 */
export class IndexedDbStore implements CatchUpStore {
  #db: Promise<IDBDatabase> | undefined;

  constructor(
    readonly dbName = "tidings-client",
    private readonly factory: IDBFactory = globalThis.indexedDB,
  ) {}

  #open(): Promise<IDBDatabase> {
    this.#db ??= new Promise((resolve, reject) => {
      const req = this.factory.open(this.dbName, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore("meta");
        db.createObjectStore("seqs");
        db.createObjectStore("pending");
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.#db;
  }

  async load(key: string): Promise<CatchUpState | undefined> {
    const db = await this.#open();
    const tx = db.transaction(["meta", "seqs", "pending"], "readonly");
    const range = prefixRange(key);
    const [meta, seqKeys, seqVals, pending] = await Promise.all([
      request<Meta | undefined>(tx.objectStore("meta").get(key)),
      request<IDBValidKey[]>(tx.objectStore("seqs").getAllKeys(range)),
      request<string[]>(tx.objectStore("seqs").getAll(range)),
      request<PendingSend[]>(tx.objectStore("pending").getAll(range)),
    ]);
    if (!meta) return undefined;
    const lastSeq: Record<string, string> = {};
    seqKeys.forEach((k, i) => {
      lastSeq[(k as string[])[1]!] = seqVals[i]!;
    });
    pending.sort((a, b) => a.createdAt - b.createdAt);
    const state: CatchUpState = { userId: meta.userId, eventCursor: meta.eventCursor, lastSeq, pending };
    if (meta.listSyncedAt !== undefined) state.listSyncedAt = meta.listSyncedAt;
    return state;
  }

  async update(key: string, change: StateChange): Promise<void> {
    const db = await this.#open();
    const tx = db.transaction(["meta", "seqs", "pending"], "readwrite");
    const meta = tx.objectStore("meta");
    const seqs = tx.objectStore("seqs");
    const pending = tx.objectStore("pending");
    const done = new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    let current = await request<Meta | undefined>(meta.get(key));
    if (change.reset) {
      seqs.delete(prefixRange(key));
      pending.delete(prefixRange(key));
      current = { userId: change.reset.userId, eventCursor: "0" };
    }
    current ??= { userId: "", eventCursor: "0" };
    if (change.eventCursor !== undefined) current = { ...current, eventCursor: change.eventCursor };
    if (change.listSyncedAt !== undefined) current = { ...current, listSyncedAt: change.listSyncedAt };
    meta.put(current, key);
    for (const [conv, seq] of Object.entries(change.seqs ?? {})) {
      if (seq === null) seqs.delete([key, conv]);
      else seqs.put(seq, [key, conv]);
    }
    for (const id of change.deletePending ?? []) pending.delete([key, id]);
    for (const p of change.putPending ?? []) pending.put(p, [key, p.clientMessageId]);
    await done;
  }
}

/** One client's scalar state. */
interface Meta {
  userId: string;
  eventCursor: string;
  listSyncedAt?: string;
}

/** Every [key, *] compound key. */
function prefixRange(key: string): IDBKeyRange {
  return IDBKeyRange.bound([key], [key, []]);
}

function request<T>(r: IDBRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result as T);
    r.onerror = () => reject(r.error);
  });
}
