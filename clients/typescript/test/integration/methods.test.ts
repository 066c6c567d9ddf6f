// Every request of the native protocol through the SDK, against the real server.
import { afterAll, describe, expect, it } from "vitest";
import {
  ClientFrameSchema,
  ConnectionClosedError,
  ConversationKind,
  ErrorCode,
  HistoryDirection,
  MemberRole,
  MessageUpdateKind,
  ReceiptKind,
  TidingsClient,
  TidingsError,
  type Message,
} from "../../dist/index.js";
import { client, mint, text, until, user } from "./helpers.js";

/** The requests each client made, by method name (to check that every request was exercised). */
const called = new Set<string>();
function tracked(c: TidingsClient): TidingsClient {
  return new Proxy(c, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (typeof v === "function" && typeof prop === "string") {
        return (...args: unknown[]) => {
          called.add(prop);
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      }
      return v;
    },
  });
}

const clients: TidingsClient[] = [];
afterAll(() => clients.forEach((c) => c.close()));

function make(u: string, o = {}) {
  const c = tracked(client(u, o));
  clients.push(c);
  return c;
}

describe("every request", () => {
  const alice = user("alice");
  const bob = user("bob");
  const carol = user("carol");

  it("conversations, members, messages, history, receipts, presence, wills and the list", async () => {
    const a = make(alice);
    const b = make(bob);
    const got: Message[] = [];
    b.on("message", (m) => got.push(m));
    const ok = await a.connect();
    expect(ok.userId).toBe(alice);
    await b.connect();
    expect(await a.ping()).toBeGreaterThan(0n);
    await a.refreshToken(mint(alice));

    // Conversations and members.
    const direct = await a.createConversation({ kind: ConversationKind.DIRECT, members: [bob] });
    expect(direct.members.sort()).toEqual([alice, bob].sort());
    const group = await a.createConversation({ kind: ConversationKind.GROUP, members: [bob], name: "team" });
    expect((await b.getConversation(group.id)).name).toBe("team");
    expect((await a.addMembers(group.id, [carol])).memberCount).toBe(3);
    expect((await a.removeMembers(group.id, [carol])).memberCount).toBe(2);
    expect((await a.updateConversation({ conversationId: group.id, name: "team 2", setAttributes: { k: "v" } })).name).toBe("team 2");
    await b.setMuted(group.id, true);
    expect((await a.listMembers(group.id)).members.sort()).toEqual([alice, bob].sort());
    const members: string[] = [];
    for await (const m of a.members(group.id, 1)) members.push(m);
    expect(members.sort()).toEqual([alice, bob].sort());
    expect(await a.countMembers(group.id)).toBe(2);
    const temp = await a.createConversation({ kind: ConversationKind.TEMPORARY, members: [bob], ttlSecs: 600 });
    expect(temp.id.startsWith("_tmp:")).toBe(true);
    // Chat rooms: joined, counted (members online), left.
    const room = await a.createConversation({ kind: ConversationKind.CHAT_ROOM, name: "lobby" });
    expect((await b.joinConversation(room.id)).memberCount).toBe(2);
    expect(await a.countMembers(room.id)).toBe(2);
    await b.leaveConversation(room.id);
    expect(await a.countMembers(room.id)).toBe(1);

    // Messages, in order, once.
    for (let i = 1; i <= 5; i++) await a.send(direct.id, `hello ${i}`, { attributes: { i: String(i) } });
    await until(b, "message", () => got.filter((m) => m.conversationId === direct.id).length === 5, "5 messages");
    expect(got.filter((m) => m.conversationId === direct.id).map((m) => text(m.content))).toEqual([1, 2, 3, 4, 5].map((i) => `hello ${i}`));
    expect((await b.syncMessages(direct.id, 2n)).messages.map((m) => m.seq)).toEqual([3n, 4n, 5n]);
    expect((await b.fetchHistory({ conversationId: direct.id, limit: 2 })).messages.map((m) => m.seq)).toEqual([4n, 5n]);
    const walked: bigint[] = [];
    for await (const m of b.history({ conversationId: direct.id, limit: 2 })) walked.push(m.seq);
    expect(walked).toEqual([5n, 4n, 3n, 2n, 1n]);
    const forward: bigint[] = [];
    for await (const m of b.history({ conversationId: direct.id, limit: 2, direction: HistoryDirection.OLDEST_FIRST })) forward.push(m.seq);
    expect(forward).toEqual([1n, 2n, 3n, 4n, 5n]);

    // Receipts.
    const receipts: { kind: number; seq: bigint }[] = [];
    a.on("receipt", (r) => receipts.push({ kind: r.kind, seq: r.seq }));
    const wanted = await a.send(direct.id, "read me", { wantReceipts: true });
    await b.ackDelivered(direct.id, wanted.seq);
    await b.markRead(direct.id, wanted.seq);
    await until(a, "receipt", () => receipts.some((r) => r.kind === ReceiptKind.READ), "read receipt");
    expect(receipts.some((r) => r.kind === ReceiptKind.DELIVERED && r.seq === wanted.seq)).toBe(true);

    // Recall and edit reach the other member.
    const updates: number[] = [];
    b.on("messageUpdated", (u) => updates.push(u.kind));
    const edited = await a.editMessage({ conversationId: direct.id, messageId: wanted.messageId, content: new TextEncoder().encode("edited") });
    expect(text(edited.content)).toBe("edited");
    const recalled = await a.recallMessage(direct.id, wanted.messageId);
    expect(recalled.recalled).toBe(true);
    await until(b, "messageUpdated", () => updates.length === 2, "two updates");
    expect(updates).toEqual([MessageUpdateKind.EDITED, MessageUpdateKind.RECALLED]);
    await b.deleteMessages({ conversationId: direct.id, messageIds: [wanted.messageId] });

    // Presence and wills.
    expect(await a.queryPresence(direct.id)).toEqual([alice, bob].sort());
    await a.subscribePresence(direct.id);
    await a.setWill({ conversationId: direct.id, content: new TextEncoder().encode("gone") });
    await a.clearWill(direct.id);
    await a.unsubscribePresence(direct.id);

    // The conversation list.
    const entries: string[] = [];
    for await (const e of b.conversations({ limit: 1 })) entries.push(e.conversationId);
    expect(entries.sort()).toEqual([direct.id, group.id, temp.id].sort());
    expect((await b.listConversations({ pinnedOnly: true })).entries).toEqual([]);
    expect((await b.getListEntry(direct.id)).lastSeq).toBe(wanted.seq);
    expect((await b.setEntryExt(direct.id, "draft")).ext).toBe("draft");
    expect((await b.pinConversation(direct.id, true)).pinned).toBe(true);
    await b.deleteListEntries([temp.id]);
    await b.leaveConversation(group.id);
    await a.deleteConversation(temp.id);

    // Errors carry the server's code.
    const e = await a.getConversation("0000000000000fff").catch((e: unknown) => e);
    expect(e).toBeInstanceOf(TidingsError);
    expect((e as TidingsError).code).toBe(ErrorCode.ERROR_CONVERSATION_NOT_FOUND);

    await b.logout();
    expect(b.state).toBe("closed");
  });

  it("refuses a bad token without retrying", async () => {
    const c = make(user("mallory"), { token: "not-a-token" });
    const closes: boolean[] = [];
    c.on("disconnected", (d) => closes.push(d.willRetry));
    const e = await c.connect().catch((e: unknown) => e);
    expect(e).toBeInstanceOf(ConnectionClosedError);
    expect((e as ConnectionClosedError).code).toBe(4002);
    expect(closes).toEqual([false]);
  });

  it("refreshes an expiring token from the callback before it lapses", async () => {
    const u = user("dave");
    let minted = 0;
    // Tokens of 3 s, refreshed 2 s before they expire (the server has no leeway here).
    const c = make(u, { token: () => (minted++, mint(u, 3)), refreshBeforeExpiryMs: 2000 });
    const closes: number[] = [];
    c.on("disconnected", (d) => closes.push(d.code));
    await c.connect();
    await new Promise((r) => setTimeout(r, 4500));
    expect(closes).toEqual([]);
    expect(minted).toBeGreaterThanOrEqual(3);
    expect(await c.ping()).toBeGreaterThan(0n);
  });

  it("speaks the JSON form when asked", async () => {
    const x = user("json-x");
    const y = user("json-y");
    const cx = make(x, { json: true });
    const cy = make(y, { json: true });
    const got: string[] = [];
    cy.on("message", (m) => got.push(text(m.content)));
    await cx.connect();
    await cy.connect();
    const conv = await cx.createConversation({ kind: ConversationKind.DIRECT, members: [y], attributes: { a: "b" } });
    const ack = await cx.send(conv.id, "über JSON", { attributes: { k: "v" } });
    expect(ack.seq).toBe(1n);
    await until(cy, "message", () => got.length === 1, "the JSON message");
    expect(got).toEqual(["über JSON"]);
    const e = await cx.recallMessage(conv.id, "nope").catch((e: unknown) => e);
    expect(e).toBeInstanceOf(TidingsError);
  });

  it("groups: roles, muting, the blacklist; user blocks and profiles", async () => {
    const [o, m, x] = [user("owner"), user("manager"), user("member")];
    const co = make(o);
    const cm = make(m);
    const cx = make(x);
    const profiles: string[] = [];
    // The manager shares the group with the owner to the end (the member is blocked out of it).
    cm.on("profileChanged", (p) => profiles.push(p.profile!.displayName));
    await co.connect();
    await cm.connect();
    await cx.connect();
    const g = await co.createConversation({ kind: ConversationKind.GROUP, members: [m, x], name: "g" });
    await co.setMemberRole({ conversationId: g.id, members: [m], role: MemberRole.MANAGER });
    await cm.muteMembers(g.id, [x], 60);
    const muted = await co.listMutedMembers(g.id);
    expect(muted.members.map((i) => i.userId)).toEqual([x]);
    const refused = await cx.send(g.id, "muted").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TidingsError);
    expect((refused as TidingsError).code).toBe(ErrorCode.ERROR_MUTED);
    await cm.unmuteMembers(g.id, [x]);
    await co.setMuteAll(g.id, true);
    await co.setMuteAll(g.id, false);
    await cx.send(g.id, "free again");
    await cm.blockMembers(g.id, [x]);
    expect((await co.listBlockedMembers(g.id)).users).toEqual([x]);
    await cm.unblockMembers(g.id, [x]);
    const moved = await co.transferOwnership(g.id, m);
    expect(moved.owner).toBe(m);

    await cx.blockUser(o);
    expect((await cx.listBlockedUsers()).users.map((u) => u.userId)).toEqual([o]);
    await cx.unblockUser(o);
    const p = await co.setProfile({ displayName: "The Owner", avatarUrl: "https://example.com/o.png" });
    expect(p.displayName).toBe("The Owner");
    expect((await cx.getProfiles([o]))[0]!.displayName).toBe("The Owner");
    await until(cm, "profileChanged", () => profiles.includes("The Owner"), "the profile push");
  });

  it("exercised every request of frames.proto", () => {
    const method: Record<string, string> = { login: "connect" };
    const all = ClientFrameSchema.oneofs[0]!.fields.map((f) => method[f.localName] ?? f.localName);
    // Sends go through send(), sendMessage's short name.
    if (called.has("send")) called.add("sendMessage");
    expect(all.filter((m) => !called.has(m))).toEqual([]);
  });
});
