// The agent console (`/widget/agent.html`): an agent signs in, sees their open temporary chats
// with visitors (newest activity first, unread counts, time left before expiry, whether the
// visitor is online), chats in several at once, and sees new chats appear live. Who gets
// which visitor is the site's business (see web/site-backend/), not this page's.
//
// Sign-in: `#token=…` in the URL (a site's staff portal links here with a token it minted),
// else the demo's token endpoint (demo mode). `?ws=` names the WebSocket URL when the page is
// hosted apart from tidings.

import {
  ConversationEventKind,
  ConversationKind,
  IndexedDbStore,
  TidingsClient,
  type ListEntry,
  type Message,
} from "@tidings/client";
import { ChatView } from "../common/chat.js";
import { TYPE_NOTICE, TYPE_WENT_AWAY, announce, clear, demoToken, duration, el, textOf, wsUrl } from "../common/util.js";

interface Chat {
  id: string;
  title: string;
  visitor: string;
  lastText: string;
  lastActivity: bigint;
  unread: number;
  expiresAt: number;
  online: boolean;
  ended: boolean;
  panel?: Panel;
}

interface Panel {
  root: HTMLElement;
  view: ChatView;
  status: HTMLElement;
  left: HTMLElement;
}

const root = document.getElementById("app")!;
const MAX_PANELS = 4;

function login(): void {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  const saved = sessionStorage.getItem("agent.user");
  if (fromUrl) {
    const sub = JSON.parse(atob(fromUrl.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as { sub: string };
    start(sub.sub, fromUrl);
    return;
  }
  if (saved) {
    start(saved);
    return;
  }
  clear(root);
  const input = el("input", { id: "agent-name", name: "agent", value: "agent", required: true, autocomplete: "username" });
  const form = el(
    "form",
    { class: "login" },
    el("h1", {}, "Agent console"),
    el("label", { htmlFor: "agent-name" }, "Agent name"),
    input,
    el("button", { type: "submit" }, "Sign in"),
    el("p", { class: "hint" }, "Demo mode: the server mints a token for any name."),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const user = input.value.trim();
    if (user) start(user);
  });
  root.append(form);
  input.focus();
}

function start(me: string, firstToken?: string): void {
  sessionStorage.setItem("agent.user", me);
  let given = firstToken;
  const client = new TidingsClient({
    url: new URLSearchParams(location.search).get("ws") ?? wsUrl(),
    token: () => {
      const t = given;
      given = undefined;
      return t ?? demoToken(me);
    },
    store: new IndexedDbStore("tidings-agent"),
    storeKey: `agent:${me}`,
  });
  const chats = new Map<string, Chat>();
  const list = el("ul", { class: "chats", "aria-label": "Open chats" });
  const panels = el("div", { class: "panels" });
  const state = el("span", { class: "state" }, "connecting");
  const count = el("span", { class: "count" });
  const signOut = el("button", { type: "button" }, "Sign out");
  signOut.addEventListener("click", () => {
    void client.logout();
    sessionStorage.removeItem("agent.user");
    location.hash = "";
    login();
  });
  clear(root);
  root.append(
    el("header", {}, el("h1", {}, "Agent console"), el("span", { class: "me" }, me), state, signOut),
    el("div", { class: "layout" }, el("aside", {}, el("h2", {}, "Open chats ", count), list), panels),
  );
  panels.append(el("p", { class: "empty" }, "Chats with visitors appear on the left as they start."));

  const sorted = () => [...chats.values()].sort((a, b) => (a.ended !== b.ended ? (a.ended ? 1 : -1) : a.lastActivity === b.lastActivity ? a.id.localeCompare(b.id) : a.lastActivity > b.lastActivity ? -1 : 1));

  function render(): void {
    clear(list);
    const open = [...chats.values()].filter((c) => !c.ended).length;
    count.textContent = `(${open})`;
    for (const c of sorted()) {
      const left = c.ended ? "ended" : c.expiresAt ? `${duration(c.expiresAt - Date.now())} left` : "";
      const b = el(
        "button",
        { type: "button", class: "open", "aria-pressed": c.panel ? "true" : "false" },
        el("span", { class: `dot ${c.online ? "online" : "offline"}`, role: "img", "aria-label": c.online ? "visitor online" : "visitor offline" }),
        el("span", { class: "title" }, c.title),
        c.unread > 0 ? el("span", { class: "badge", "aria-label": `${c.unread} unread` }, String(c.unread)) : null,
        el("span", { class: "preview" }, c.lastText),
        el("span", { class: "left", dataset: { expires: String(c.expiresAt) } }, left),
      );
      b.addEventListener("click", () => (c.panel ? closePanel(c) : openPanel(c)));
      list.append(el("li", { dataset: { conversation: c.id }, class: c.ended ? "ended" : "" }, b));
    }
  }

  // Time left, every second, without rebuilding the list.
  setInterval(() => {
    for (const span of list.querySelectorAll<HTMLElement>(".left[data-expires]")) {
      const at = Number(span.dataset.expires);
      if (at && span.textContent !== "ended") span.textContent = `${duration(at - Date.now())} left`;
    }
    for (const c of chats.values()) if (c.panel && c.expiresAt && !c.ended) c.panel.left.textContent = `${duration(c.expiresAt - Date.now())} left`;
  }, 1000);

  function preview(m: Message): string {
    if (m.recalled) return "(recalled)";
    if (m.type === TYPE_WENT_AWAY) return "the visitor left the page";
    if (m.type === TYPE_NOTICE) return textOf(m);
    return `${m.sender === me ? "You" : "Visitor"}: ${textOf(m)}`;
  }

  async function add(e: ListEntry): Promise<void> {
    if (e.kind !== ConversationKind.TEMPORARY) return;
    const conv = await client.getConversation(e.conversationId);
    // The site backend names the visitor; otherwise the member who is not this agent.
    const visitor = conv.attributes.visitor ?? conv.members.find((u) => u !== me) ?? "";
    const old = chats.get(e.conversationId);
    const c: Chat = {
      id: e.conversationId,
      title: conv.attributes.visitor_name ? `${conv.attributes.visitor_name}` : e.name || visitor,
      visitor,
      lastText: e.lastMessage ? preview(e.lastMessage) : "new chat",
      lastActivity: e.lastActivity,
      unread: e.unread,
      expiresAt: Number(e.expiresAt),
      online: old?.online ?? false,
      ended: false,
      panel: old?.panel,
    };
    if (c.panel) c.unread = 0;
    chats.set(c.id, c);
    await client.subscribePresence(c.id);
    c.online = (await client.queryPresence(c.id)).includes(visitor);
    render();
  }

  async function refresh(): Promise<void> {
    for await (const e of client.conversations({ kind: ConversationKind.TEMPORARY, limit: 50 })) {
      await add(e);
    }
    render();
  }

  function openPanel(c: Chat): void {
    const open = [...chats.values()].filter((x) => x.panel);
    if (open.length >= MAX_PANELS) closePanel(open[0]!);
    panels.querySelector(".empty")?.remove();
    const view = new ChatView({
      client,
      me,
      conversationId: c.id,
      actions: true,
      nameOf: (u) => (u === me ? "You" : u === c.visitor ? c.title : u),
      onSent: (text, at) => {
        c.lastText = `You: ${text}`;
        if (at > c.lastActivity) c.lastActivity = at;
        render();
      },
      onGone: () => {
        c.ended = true;
        view.end("This chat has ended.");
        render();
      },
    });
    const status = el("span", { class: `presence ${c.online ? "online" : "offline"}` }, c.online ? "online" : "offline");
    const left = el("span", { class: "left" });
    const close = el("button", { type: "button", "aria-label": `Close the chat with ${c.title}` }, "×");
    close.addEventListener("click", () => closePanel(c));
    const panel = el("article", { class: "panel", dataset: { conversation: c.id }, "aria-label": `Chat with ${c.title}` }, el("header", {}, el("h2", {}, c.title), status, left, close), view.root);
    c.panel = { root: panel, view, status, left };
    c.unread = 0;
    if (c.ended) view.end("This chat has ended.");
    panels.append(panel);
    render();
    void view.load().then(() => view.focus());
  }

  function closePanel(c: Chat): void {
    c.panel?.root.remove();
    c.panel = undefined;
    render();
  }

  client.on("state", (s) => {
    state.textContent = s === "connected" ? "online" : s;
    state.dataset.state = s;
  });
  client.on("connected", () => void refresh());
  client.on("message", (m) => {
    const c = chats.get(m.conversationId);
    if (!c) return;
    if (m.transient) {
      c.panel?.view.add(m);
      return;
    }
    c.lastText = preview(m);
    if (m.serverTime > c.lastActivity) c.lastActivity = m.serverTime;
    if (m.type === TYPE_WENT_AWAY) {
      c.online = false;
      if (c.panel) {
        c.panel.status.textContent = "offline";
        c.panel.status.className = "presence offline";
      }
    }
    if (c.panel) c.panel.view.add(m);
    else if (m.sender !== me) c.unread += 1;
    if (m.sender !== me) announce(`${c.title}: ${preview(m)}`);
    render();
  });
  client.on("messageUpdated", (u) => u.message && chats.get(u.message.conversationId)?.panel?.view.updated(u.kind, u.message));
  client.on("receipt", (r) => chats.get(r.conversationId)?.panel?.view.receipt(r));
  // One push per change, naming every subscribed chat with that visitor.
  client.on("presence", (p) => {
    for (const id of p.conversationIds) {
      const c = chats.get(id);
      if (!c || p.userId !== c.visitor) continue;
      c.online = p.online;
      if (c.panel) {
        c.panel.status.textContent = p.online ? "online" : "offline";
        c.panel.status.className = `presence ${p.online ? "online" : "offline"}`;
        c.panel.view.notice(p.online ? `${c.title} is back online` : `${c.title} went offline`);
      }
    }
    render();
  });
  client.on("conversationEvent", (e) => {
    if (e.kind === ConversationEventKind.CREATED || e.kind === ConversationEventKind.MEMBERS_ADDED) {
      // Someone else joined a chat this agent has (a new agent or a supervisor): say so.
      const known = chats.get(e.conversationId);
      if (known && e.kind === ConversationEventKind.MEMBERS_ADDED && !e.members.includes(me)) {
        known.panel?.view.notice(`${e.members.join(", ")} joined the chat`);
        return;
      }
      void client
        .getListEntry(e.conversationId)
        .then(async (entry) => {
          const isNew = !chats.has(e.conversationId);
          await add(entry);
          if (isNew) announce(`New chat: ${chats.get(e.conversationId)?.title ?? ""}`);
        })
        // The agent may have been removed meanwhile (a transfer): nothing to show.
        .catch(() => undefined);
      return;
    }
    const c = chats.get(e.conversationId);
    if (!c) return;
    if (e.kind === ConversationEventKind.EXPIRED || e.kind === ConversationEventKind.DELETED || (e.kind === ConversationEventKind.MEMBERS_REMOVED && e.members.includes(me))) {
      c.ended = true;
      c.lastText = e.kind === ConversationEventKind.EXPIRED ? "expired" : e.kind === ConversationEventKind.DELETED ? "ended" : "handed over";
      c.panel?.view.end(e.kind === ConversationEventKind.EXPIRED ? "This chat expired." : "This chat has ended.");
      render();
    }
  });
  client.connect().catch((e: unknown) => {
    state.textContent = `cannot connect: ${e instanceof Error ? e.message : String(e)}`;
  });
}

login();
