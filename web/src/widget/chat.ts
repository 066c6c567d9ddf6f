// The widget's chat, inside the iframe (`/widget/chat.html`, served by tidings): a pre-chat
// form (name, email), then a temporary conversation with an agent: typing indicator, "agent
// joined" and "chat ended" notices, reconnects and reloads without losing messages, expiry
// with a clear message and a way to start again; "leave a message" when no agent is online.
//
// Tokens: in site mode the host page's widget.js asks the site's backend (postMessage); in demo
// mode this page asks the server's /demo/token and opens the chat itself.

import {
  ConversationEventKind,
  ConversationKind,
  ErrorCode,
  IndexedDbStore,
  TidingsClient,
  TidingsError,
} from "@tidings/client";
import { ChatView } from "../common/chat.js";
import { TYPE_NOTICE, TYPE_WENT_AWAY, announce, clear, demoToken, el, wsUrl } from "../common/util.js";

interface Saved {
  user: string;
  name: string;
  email: string;
  conversationId?: string;
  agent?: string;
}

interface Session {
  user: string;
  token: string;
  conversationId?: string;
  agent?: string;
  leaveMessage?: boolean;
}

const q = new URLSearchParams(location.search);
const hostOrigin = q.get("host") ?? "";
const siteMode = q.get("mode") === "site";
const demoAgent = q.get("agent") ?? "agent";
const ttl = Number(q.get("ttl") ?? "0") || 0;
const title = q.get("title") ?? "Chat with us";
const socketUrl = q.get("ws") ?? wsUrl();
const savedKey = `tidings.widget.${hostOrigin}`;
const root = document.getElementById("app")!;

// ---- Talking to the host page (site mode) ----

let nextId = 1;
const waiting = new Map<number, { resolve: (r: Record<string, unknown>) => void; reject: (e: Error) => void }>();

function toHost(msg: Record<string, unknown>): void {
  if (window.parent !== window && hostOrigin) window.parent.postMessage({ tidings: true, ...msg }, hostOrigin);
}

/** Asks the host page to call the site's backend (`start`, `token`, `leave`). */
function askHost(type: string, body: unknown): Promise<Record<string, unknown>> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    waiting.set(id, { resolve, reject });
    toHost({ type, id, body });
    setTimeout(() => {
      if (waiting.delete(id)) reject(new Error("the site did not answer"));
    }, 15000);
  });
}

let visible = window.parent === window;
let unread = 0;
let chat: ChatView | undefined;

window.addEventListener("message", (e: MessageEvent) => {
  if (e.source !== window.parent || e.origin !== hostOrigin) return;
  const m = e.data as Record<string, unknown>;
  if (!m || m.tidings !== true) return;
  if (m.type === "reply" && typeof m.id === "number") {
    const w = waiting.get(m.id);
    waiting.delete(m.id);
    if (m.ok) w?.resolve((m.reply ?? {}) as Record<string, unknown>);
    else w?.reject(new Error(String(m.error)));
  } else if (m.type === "visible") {
    visible = Boolean(m.visible);
    chat?.setActive(visible);
    if (visible) {
      unread = 0;
      toHost({ type: "unread", count: 0 });
      chat?.focus();
    }
  }
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") toHost({ type: "close" });
});

// ---- State ----

function load(): Saved | undefined {
  try {
    const s = JSON.parse(localStorage.getItem(savedKey) ?? "null") as Saved | null;
    return s ?? undefined;
  } catch {
    return undefined;
  }
}

function save(s: Saved): void {
  localStorage.setItem(savedKey, JSON.stringify(s));
}

// ---- Views ----

function frame(...children: (HTMLElement | null)[]): void {
  clear(root);
  const close = el("button", { type: "button", class: "close", "aria-label": "Close chat" }, "×");
  close.addEventListener("click", () => toHost({ type: "close" }));
  root.append(el("header", {}, el("h1", {}, title), window.parent !== window ? close : null), ...children.filter((c): c is HTMLElement => c !== null));
}

function prechat(prev?: Saved, why?: string): void {
  const name = el("input", { id: "name", name: "name", required: true, autocomplete: "name", value: prev?.name ?? "" });
  const email = el("input", { id: "email", name: "email", type: "email", required: true, autocomplete: "email", value: prev?.email ?? "" });
  const status = el("p", { class: "status", role: "status" }, why ?? "");
  const start = el("button", { type: "submit" }, "Start chat");
  const form = el(
    "form",
    { class: "prechat" },
    el("p", {}, "Hello! Tell us who you are and an agent will be with you."),
    el("label", { htmlFor: "name" }, "Name"),
    name,
    el("label", { htmlFor: "email" }, "Email"),
    email,
    start,
    status,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    start.disabled = true;
    status.textContent = "Connecting…";
    begin(name.value.trim(), email.value.trim()).catch((err: unknown) => {
      start.disabled = false;
      status.textContent = `Could not start the chat: ${err instanceof Error ? err.message : String(err)}`;
    });
  });
  frame(form);
  name.focus();
}

function leaveMessage(s: Saved): void {
  const text = el("textarea", { id: "message", name: "message", required: true, rows: 5 });
  const status = el("p", { class: "status", role: "status" });
  const send = el("button", { type: "submit" }, "Send");
  const form = el(
    "form",
    { class: "leave" },
    el("p", {}, "No agent is available right now. Leave a message and we will answer by email."),
    el("label", { htmlFor: "message" }, "Your message"),
    text,
    send,
    status,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send.disabled = true;
    askHost("leave", { name: s.name, email: s.email, text: text.value }).then(
      () => {
        clear(form);
        form.append(el("p", { class: "thanks", role: "status" }, `Thank you, ${s.name}. We will answer at ${s.email}.`));
      },
      (err: unknown) => {
        send.disabled = false;
        status.textContent = err instanceof Error ? err.message : String(err);
      },
    );
  });
  frame(form);
  text.focus();
}

/** Gets a visitor identity and a chat with an agent, from the site (or the demo's token endpoint). */
async function begin(name: string, email: string): Promise<void> {
  if (siteMode) {
    const s = (await askHost("start", { name, email })) as unknown as Session;
    const saved: Saved = { user: s.user, name, email, conversationId: s.conversationId, agent: s.agent };
    save(saved);
    if (s.leaveMessage || !s.conversationId) leaveMessage(saved);
    else connect(saved, s.token, false);
    return;
  }
  const prev = load();
  const user = prev?.user ?? `visitor-${crypto.randomUUID().slice(0, 8)}`;
  const token = await demoToken(user);
  const saved: Saved = { user, name, email, agent: demoAgent };
  const client = newClient(saved, token);
  await client.connect();
  const conv = await client.createConversation({
    kind: ConversationKind.TEMPORARY,
    members: [demoAgent],
    name: `${name} <${email}>`,
    attributes: { visitor_name: name, visitor_email: email },
    ttlSecs: ttl,
    unique: true,
  });
  saved.conversationId = conv.id;
  save(saved);
  show(client, saved, true);
}

let current: TidingsClient | undefined;

function newClient(s: Saved, first: string): TidingsClient {
  current?.close();
  let token: string | undefined = first;
  const client = new TidingsClient({
    url: socketUrl,
    token: async () => {
      // The first connect uses the token that came with the session; later ones a fresh one.
      if (token) {
        const t = token;
        token = undefined;
        return t;
      }
      if (siteMode) return String((await askHost("token", {})).token);
      return demoToken(s.user);
    },
    store: new IndexedDbStore("tidings-widget"),
    storeKey: `widget:${s.user}`,
  });
  current = client;
  return client;
}

function connect(s: Saved, token: string | undefined, fresh: boolean): void {
  const client = newClient(s, token ?? "");
  show(client, s, fresh);
  client.connect().catch((err: unknown) => chat?.notice(`Cannot connect: ${err instanceof Error ? err.message : String(err)}`));
}

function show(client: TidingsClient, s: Saved, fresh: boolean): void {
  const conversationId = s.conversationId!;
  const agent = s.agent ?? "the agent";
  const state = el("p", { class: "state", role: "status" });
  const agentState = el("span", { class: "presence offline" }, "offline");
  const view = new ChatView({
    client,
    me: s.user,
    conversationId,
    nameOf: (u) => (u === s.user ? "You" : u === s.agent ? `${u} (agent)` : u),
    onMessage: (m) => {
      if (m.sender !== s.user && !visible) {
        unread += 1;
        toHost({ type: "unread", count: unread });
      }
    },
    onGone: () => ended("This chat has ended."),
  });
  chat = view;
  view.setActive(visible);
  const again = el("button", { type: "button", class: "again", hidden: true }, "Start a new chat");
  again.addEventListener("click", () => {
    client.close();
    const next: Saved = { user: s.user, name: s.name, email: s.email };
    save(next);
    prechat(next);
  });
  const agentName = el("span", {}, `You are chatting with ${agent} `);
  frame(el("div", { class: "agent" }, agentName, agentState), state, view.root, again);

  function ended(why: string): void {
    if (view.ended) return;
    view.end(why);
    again.hidden = false;
    announce(why);
    const saved = load();
    if (saved?.conversationId === conversationId) save({ user: s.user, name: s.name, email: s.email });
  }

  const offs: (() => void)[] = [];
  const on: typeof client.on = (name, fn) => {
    const off = client.on(name, fn);
    offs.push(off);
    return off;
  };
  on("state", (st) => {
    state.textContent = st === "connected" ? "" : st === "connecting" || st === "disconnected" ? "Reconnecting…" : "";
  });
  on("message", (m) => {
    view.add(m);
    if (m.conversationId !== conversationId || m.type !== TYPE_NOTICE) return;
    // The site handed the chat to another agent in this conversation: talk to them now.
    const now = m.attributes.agent;
    if (now && now !== s.agent && !m.attributes.moved_to) {
      s.agent = now;
      save({ ...s });
      agentName.textContent = `You are chatting with ${now} `;
      void client.queryPresence(conversationId).then((online) => {
        const on = online.includes(now);
        agentState.textContent = on ? "online" : "offline";
        agentState.className = `presence ${on ? "online" : "offline"}`;
      }, () => undefined);
    }
    // A site backend that moves the chat to another conversation names it: follow it.
    const next = m.attributes.moved_to;
    if (next) {
      for (const off of offs) off();
      void client.clearWill(conversationId).catch(() => undefined);
      const moved: Saved = { ...s, conversationId: next, agent: m.attributes.agent ?? s.agent };
      save(moved);
      show(client, moved, false);
    }
  });
  on("messageUpdated", (u) => u.message && view.updated(u.kind, u.message));
  on("receipt", (r) => view.receipt(r));
  on("presence", (p) => {
    if (!p.conversationIds.includes(conversationId) || p.userId !== s.agent) return;
    agentState.textContent = p.online ? "online" : "offline";
    agentState.className = `presence ${p.online ? "online" : "offline"}`;
  });
  on("conversationEvent", (e) => {
    if (e.conversationId !== conversationId) return;
    if (e.kind === ConversationEventKind.EXPIRED) ended("This chat has ended: its time ran out. Start a new one if you still need help.");
    else if (e.kind === ConversationEventKind.DELETED) ended("The agent ended this chat.");
    else if (e.kind === ConversationEventKind.MEMBERS_ADDED) view.notice(`${e.members.join(", ")} joined the chat`);
  });
  let first = true;
  const onConnected = () => {
    const setup = async () => {
      if (first) {
        first = false;
        await view.load();
        if (fresh) view.notice(`${agent} joined the chat`);
      }
      // A will: if this page goes away without closing the socket, the agent is told.
      await client.setWill({ conversationId, type: TYPE_WENT_AWAY, content: new TextEncoder().encode("the visitor closed the page") });
      await client.subscribePresence(conversationId);
      const online = await client.queryPresence(conversationId);
      const on = s.agent !== undefined && online.includes(s.agent);
      agentState.textContent = on ? "online" : "offline";
      agentState.className = `presence ${on ? "online" : "offline"}`;
    };
    setup().catch((err: unknown) => {
      if (err instanceof TidingsError && (err.code === ErrorCode.ERROR_CONVERSATION_NOT_FOUND || err.code === ErrorCode.ERROR_TEMPORARY_CONVERSATION_EXPIRED || err.code === ErrorCode.ERROR_NOT_A_MEMBER)) {
        ended("This chat has ended.");
      }
    });
  };
  on("connected", onConnected);
  if (client.state === "connected") onConnected();
  view.focus();
}

// ---- Start ----

const saved = load();
if (saved?.conversationId) connect(saved, undefined, false);
else prechat(saved);
toHost({ type: "ready" });
