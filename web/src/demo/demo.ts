// The two-pane demo (`/demo/`): two users side by side in one page (or one per tab with
// `?user=alice`), each with the conversation list (unread badges, pins, last message, live
// reordering) and a conversation view (history paged upwards, read ticks, typing, recall and
// edit, presence). Everything comes from the server and the SDK's persisted catch-up state,
// so a reload keeps it.

import {
  ConversationEventKind,
  ConversationKind,
  IndexedDbStore,
  ReceiptKind,
  TidingsClient,
  type ListEntry,
  type Message,
} from "@tidings/client";
import { ChatView } from "../common/chat.js";
import { TYPE_NOTICE, TYPE_WENT_AWAY, announce, clear, demoToken, el, textOf, timeOf, wsUrl } from "../common/util.js";

interface Entry {
  id: string;
  kind: ConversationKind;
  peer: string;
  name: string;
  lastText: string;
  lastActivity: bigint;
  unread: number;
  pinnedAt: bigint;
  expiresAt: bigint;
  ended: boolean;
}

const params = new URLSearchParams(location.search);
const tab = sessionStorage.getItem("demo.tab") ?? crypto.randomUUID().slice(0, 8);
sessionStorage.setItem("demo.tab", tab);
const store = new IndexedDbStore("tidings-demo");

class Pane {
  readonly root: HTMLElement;
  #index: number;
  #user = "";
  #client: TidingsClient | undefined;
  #entries = new Map<string, Entry>();
  #online = new Set<string>();
  /** Per conversation, the highest seq another member read (from receipts, while this page lives). */
  #peerRead = new Map<string, bigint>();
  #subscribed = new Set<string>();
  #chat: ChatView | undefined;
  #list = el("ul", { class: "conversations", "aria-label": "Conversations" });
  #main = el("div", { class: "conversation" });
  #state = el("span", { class: "state", dataset: { state: "idle" } }, "offline");

  constructor(index: number, preset: string | null) {
    this.#index = index;
    this.root = el("section", { class: "pane", "aria-label": `Pane ${index + 1}` });
    const user = preset ?? sessionStorage.getItem(this.#key("user"));
    if (user) this.#start(user);
    else this.#login(index === 0 ? "alice" : "bob");
  }

  #key(k: string): string {
    return `demo.pane.${this.#index}.${k}`;
  }

  #login(suggest: string): void {
    clear(this.root);
    const id = `user-${this.#index}`;
    const input = el("input", { id, name: "user", value: suggest, required: true, autocomplete: "username" });
    const form = el(
      "form",
      { class: "login" },
      el("h2", {}, "Sign in"),
      el("label", { htmlFor: id }, "User name"),
      input,
      el("button", { type: "submit" }, "Sign in"),
      el("p", { class: "hint" }, "Demo mode: the server mints a token for any name."),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const user = input.value.trim();
      if (user) this.#start(user);
    });
    this.root.append(form);
    if (this.#index === 0) input.focus();
  }

  #start(user: string): void {
    this.#user = user;
    sessionStorage.setItem(this.#key("user"), user);
    this.root.dataset.user = user;
    const client = new TidingsClient({
      url: wsUrl(),
      token: () => demoToken(user),
      device: `web-demo-${tab}-${this.#index}`,
      store,
      storeKey: `demo:${user}:${tab}:${this.#index}`,
    });
    this.#client = client;
    clear(this.root);
    const signOut = el("button", { type: "button", class: "sign-out" }, "Sign out");
    signOut.addEventListener("click", () => {
      void client.logout();
      sessionStorage.removeItem(this.#key("user"));
      sessionStorage.removeItem(this.#key("open"));
      this.#entries.clear();
      this.#chat = undefined;
      this.#login("");
    });
    this.root.append(
      el("header", {}, el("h2", {}, user), this.#state, signOut),
      el("div", { class: "body" }, el("aside", {}, this.#newForm(), this.#list), this.#main),
    );
    this.#main.append(el("p", { class: "empty" }, "Pick a conversation, or start one."));
    client.on("state", (s) => {
      this.#state.dataset.state = s;
      this.#state.textContent = s === "connected" ? "online" : s;
    });
    let connects = 0;
    client.on("connected", () => {
      this.root.dataset.connects = String(++connects);
      void this.#refresh();
    });
    client.on("message", (m) => this.#message(m));
    client.on("messageUpdated", (u) => {
      if (u.message) {
        this.#chat?.updated(u.kind, u.message);
        this.#preview(u.message);
      }
    });
    client.on("receipt", (r) => {
      if (r.kind === ReceiptKind.READ && r.userId !== user && r.seq > (this.#peerRead.get(r.conversationId) ?? 0n)) {
        this.#peerRead.set(r.conversationId, r.seq);
      }
      this.#chat?.receipt(r);
    });
    client.on("readPosition", (r) => {
      const e = this.#entries.get(r.conversationId);
      if (e) {
        e.unread = r.unread;
        this.#render();
      }
    });
    client.on("listEntryChanged", (c) => {
      if (c.entry) this.#put(c.entry);
    });
    client.on("listEntriesDeleted", (d) => {
      for (const id of d.conversationIds) this.#entries.delete(id);
      this.#render();
    });
    client.on("presence", (p) => {
      if (p.online) this.#online.add(p.userId);
      else this.#online.delete(p.userId);
      this.#render();
      this.#renderHeader();
    });
    client.on("conversationEvent", (e) => {
      switch (e.kind) {
        case ConversationEventKind.CREATED:
        case ConversationEventKind.MEMBERS_ADDED:
        case ConversationEventKind.UPDATED:
          void this.#fetchEntry(e.conversationId);
          break;
        case ConversationEventKind.EXPIRED:
        case ConversationEventKind.DELETED:
          this.#ended(e.conversationId, e.kind === ConversationEventKind.EXPIRED ? "This conversation expired." : "This conversation was deleted.");
          break;
        case ConversationEventKind.LEFT:
        case ConversationEventKind.MEMBERS_REMOVED:
          if (e.members.includes(user)) this.#ended(e.conversationId, "You are no longer a member.");
          break;
        default:
          break;
      }
    });
    client.connect().catch((e: unknown) => {
      this.#state.textContent = `cannot connect: ${e instanceof Error ? e.message : String(e)}`;
    });
  }

  #newForm(): HTMLElement {
    const i = this.#index;
    const kind = el(
      "select",
      { id: `kind-${i}`, name: "kind" },
      el("option", { value: "direct" }, "Direct"),
      el("option", { value: "group" }, "Group"),
      el("option", { value: "temporary" }, "Temporary"),
    );
    const members = el("input", { id: `members-${i}`, name: "members", placeholder: "bob, carol", required: true });
    const name = el("input", { id: `name-${i}`, name: "name", placeholder: "optional" });
    const status = el("p", { class: "form-status", role: "status" });
    const form = el(
      "form",
      { class: "new" },
      el("h3", {}, "New conversation"),
      el("label", { htmlFor: `kind-${i}` }, "Kind"),
      kind,
      el("label", { htmlFor: `members-${i}` }, "With (user names)"),
      members,
      el("label", { htmlFor: `name-${i}` }, "Name"),
      name,
      el("button", { type: "submit" }, "Start"),
      status,
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const client = this.#client;
      if (!client) return;
      const k = kind.value === "group" ? ConversationKind.GROUP : kind.value === "temporary" ? ConversationKind.TEMPORARY : ConversationKind.DIRECT;
      const list = members.value.split(/[,\s]+/).filter(Boolean);
      status.textContent = "";
      client
        .createConversation({ kind: k, members: list, name: name.value.trim(), ttlSecs: k === ConversationKind.TEMPORARY ? 3600 : 0 })
        .then(async (c) => {
          members.value = "";
          name.value = "";
          await this.#fetchEntry(c.id);
          this.#open(c.id);
        })
        .catch((err: unknown) => {
          status.textContent = err instanceof Error ? err.message : String(err);
        });
    });
    return form;
  }

  /** The whole list, again (at every login: cheap for a demo, and nothing is missed). */
  async #refresh(): Promise<void> {
    const client = this.#client;
    if (!client) return;
    const fresh = new Map<string, Entry>();
    for await (const e of client.conversations({ limit: 50 })) {
      fresh.set(e.conversationId, this.#entryOf(e));
      if (fresh.size >= 200) break;
    }
    for (const [id, old] of this.#entries) if (old.ended && !fresh.has(id)) fresh.set(id, old);
    this.#entries = fresh;
    this.#render();
    for (const e of fresh.values()) if (e.kind === ConversationKind.DIRECT) void this.#presence(e.id);
    const open = sessionStorage.getItem(this.#key("open"));
    if (open && fresh.has(open) && this.#chat?.id !== open) this.#open(open);
  }

  async #fetchEntry(id: string): Promise<void> {
    try {
      const e = await this.#client!.getListEntry(id);
      this.#put(e);
      if (e.kind === ConversationKind.DIRECT) void this.#presence(id);
    } catch {
      // Not in the list (left, deleted): nothing to show.
    }
  }

  async #presence(id: string): Promise<void> {
    if (this.#subscribed.has(id) || !this.#client) return;
    this.#subscribed.add(id);
    await this.#client.subscribePresence(id);
    for (const u of await this.#client.queryPresence(id)) this.#online.add(u);
    this.#render();
    this.#renderHeader();
  }

  #entryOf(e: ListEntry): Entry {
    return {
      id: e.conversationId,
      kind: e.kind,
      peer: e.peer,
      name: e.name,
      lastText: e.lastMessage ? this.#previewText(e.lastMessage) : "",
      lastActivity: e.lastActivity,
      unread: e.unread,
      pinnedAt: e.pinned ? e.pinnedAt || 1n : 0n,
      expiresAt: e.expiresAt,
      ended: false,
    };
  }

  #put(e: ListEntry): void {
    const entry = this.#entryOf(e);
    if (this.#chat?.id === entry.id) entry.unread = 0;
    this.#entries.set(entry.id, entry);
    this.#render();
  }

  #previewText(m: Message): string {
    if (m.recalled) return "(recalled)";
    if (m.type === TYPE_WENT_AWAY) return `${m.sender} left the page`;
    const t = textOf(m);
    return m.type === TYPE_NOTICE ? t : `${m.sender === this.#user ? "You" : m.sender}: ${t}`;
  }

  #preview(m: Message): void {
    const e = this.#entries.get(m.conversationId);
    if (!e) return;
    e.lastText = this.#previewText(m);
    this.#render();
  }

  #message(m: Message): void {
    if (m.transient) {
      this.#chat?.add(m);
      return;
    }
    const e = this.#entries.get(m.conversationId);
    if (!e) {
      void this.#fetchEntry(m.conversationId);
      return;
    }
    e.lastText = this.#previewText(m);
    if (m.serverTime > e.lastActivity) e.lastActivity = m.serverTime;
    const open = this.#chat?.id === m.conversationId && document.visibilityState === "visible";
    if (m.sender !== this.#user && !open) {
      e.unread += 1;
      announce(`${m.sender}: ${textOf(m)}`);
    }
    this.#chat?.add(m);
    this.#render();
  }

  #ended(id: string, why: string): void {
    const e = this.#entries.get(id);
    if (e) e.ended = true;
    if (this.#chat?.id === id) this.#chat.end(why);
    this.#render();
  }

  #title(e: Entry): string {
    if (e.kind === ConversationKind.DIRECT) return e.peer || e.name || e.id;
    if (e.kind === ConversationKind.TEMPORARY) return e.name || "Temporary chat";
    return e.name || "Group";
  }

  /** Pinned first (newest pin first), then by last activity. */
  #sorted(): Entry[] {
    return [...this.#entries.values()].sort((a, b) => {
      if ((a.pinnedAt > 0n) !== (b.pinnedAt > 0n)) return a.pinnedAt > 0n ? -1 : 1;
      if (a.pinnedAt !== b.pinnedAt) return a.pinnedAt > b.pinnedAt ? -1 : 1;
      return a.lastActivity === b.lastActivity ? a.id.localeCompare(b.id) : a.lastActivity > b.lastActivity ? -1 : 1;
    });
  }

  #render(): void {
    const focused = document.activeElement instanceof HTMLElement ? document.activeElement.dataset.focusKey : undefined;
    clear(this.#list);
    for (const e of this.#sorted()) {
      const title = this.#title(e);
      const open = this.#chat?.id === e.id;
      const dot =
        e.kind === ConversationKind.DIRECT
          ? el("span", { class: `dot ${this.#online.has(e.peer) ? "online" : "offline"}`, "aria-label": this.#online.has(e.peer) ? "online" : "offline", role: "img" })
          : null;
      const button = el(
        "button",
        { type: "button", class: "open", "aria-current": open ? "true" : undefined, dataset: { focusKey: `open-${e.id}` } },
        dot,
        el("span", { class: "title" }, title),
        e.pinnedAt > 0n ? el("span", { class: "pin" }, "pinned") : null,
        e.unread > 0 ? el("span", { class: "badge", "aria-label": `${e.unread} unread` }, String(e.unread)) : null,
        el("span", { class: "preview" }, e.ended ? "(ended)" : e.lastText),
        el("span", { class: "time" }, e.lastActivity > 0n ? timeOf(e.lastActivity) : ""),
      );
      button.addEventListener("click", () => this.#open(e.id));
      const pin = el(
        "button",
        { type: "button", class: "pin-toggle", "aria-pressed": e.pinnedAt > 0n ? "true" : "false", "aria-label": `${e.pinnedAt > 0n ? "Unpin" : "Pin"} ${title}`, dataset: { focusKey: `pin-${e.id}` } },
        e.pinnedAt > 0n ? "Unpin" : "Pin",
      );
      pin.addEventListener("click", () => {
        void this.#client?.pinConversation(e.id, !(e.pinnedAt > 0n)).then((entry) => this.#put(entry));
      });
      this.#list.append(el("li", { dataset: { conversation: e.id }, class: e.ended ? "ended" : "" }, button, pin));
    }
    if (focused) this.#list.querySelector<HTMLElement>(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
  }

  #header = el("div", { class: "conv-header" });

  #renderHeader(): void {
    const id = this.#chat?.id;
    const e = id ? this.#entries.get(id) : undefined;
    clear(this.#header);
    if (!e) return;
    const parts: (HTMLElement | string)[] = [el("h3", {}, this.#title(e))];
    if (e.kind === ConversationKind.DIRECT) {
      const on = this.#online.has(e.peer);
      parts.push(el("span", { class: `presence ${on ? "online" : "offline"}` }, on ? "online" : "offline"));
    }
    if (e.expiresAt > 0n) parts.push(el("span", { class: "expires" }, `ends at ${timeOf(e.expiresAt)}`));
    this.#header.append(...parts);
  }

  #open(id: string): void {
    const client = this.#client;
    if (!client) return;
    sessionStorage.setItem(this.#key("open"), id);
    const chat = new ChatView({
      client,
      me: this.#user,
      conversationId: id,
      actions: true,
      peerRead: this.#peerRead.get(id),
      onSent: (text, at) => {
        const e = this.#entries.get(id);
        if (!e) return;
        e.lastText = `You: ${text}`;
        if (at > e.lastActivity) e.lastActivity = at;
        this.#render();
      },
    });
    this.#chat = chat;
    clear(this.#main);
    this.#main.append(this.#header, chat.root);
    this.#renderHeader();
    const e = this.#entries.get(id);
    if (e) {
      e.unread = 0;
      if (e.ended) chat.end("This conversation has ended.");
    }
    this.#render();
    void this.#presence(id);
    void chat.load().then(() => chat.focus());
  }
}

const app = document.getElementById("app")!;
const preset = params.get("user");
const panes = preset ? [new Pane(0, preset)] : [new Pane(0, null), new Pane(1, null)];
app.classList.toggle("single", panes.length === 1);
for (const p of panes) app.append(p.root);
