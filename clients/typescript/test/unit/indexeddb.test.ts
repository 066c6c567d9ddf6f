import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import { IndexedDbStore } from "../../src/index.js";

describe("IndexedDbStore", () => {
  it("keeps seqs, the cursor and pending sends per key, and resets", async () => {
    const store = new IndexedDbStore("t1");
    expect(await store.load("a")).toBeUndefined();
    const p = { clientMessageId: "c1", conversationId: "x", type: 0, content: new Uint8Array([1, 2]), attributes: { k: "v" }, mentions: [], wantReceipts: false, createdAt: 1 };
    await store.update("a", { reset: { userId: "alice" } });
    await store.update("a", { seqs: { x: "5", y: "7" }, eventCursor: "12", putPending: [p] });
    await store.update("b", { reset: { userId: "bob" }, seqs: { z: "1" } });
    await store.update("a", { seqs: { y: null } });
    // A second instance on the same database (a reloaded page) sees it all.
    const again = new IndexedDbStore("t1");
    expect(await again.load("a")).toEqual({ userId: "alice", eventCursor: "12", lastSeq: { x: "5" }, pending: [p] });
    expect((await again.load("b"))!.lastSeq).toEqual({ z: "1" });
    await again.update("a", { listSyncedAt: "1700000000000" });
    expect((await store.load("a"))!.listSyncedAt).toBe("1700000000000");
    await again.update("a", { deletePending: ["c1"] });
    expect((await store.load("a"))!.pending).toEqual([]);
    await again.update("a", { reset: { userId: "carol" } });
    // A reset forgets the list's sync time too.
    expect(await store.load("a")).toEqual({ userId: "carol", eventCursor: "0", lastSeq: {}, pending: [] });
  });
});
