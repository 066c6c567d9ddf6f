// One conversation's view: its messages (history paged upwards, live ones once each, in seq
// order), read ticks from receipts, a typing indicator from transient messages, recall and
// edit of one's own messages, and a composer. The demo, the widget and the agent console all
// use it.

import {
  ErrorCode,
  MessageUpdateKind,
  ReceiptKind,
  TidingsError,
  type Message,
  type Receipt,
  type TidingsClient,
} from "@tidings/client";
import { TYPE_NOTICE, TYPE_TYPING, TYPE_WENT_AWAY, el, clear, textOf, throttle, timeOf, who } from "./util.js";

export interface ChatOptions {
  client: TidingsClient;
  me: string;
  conversationId: string;
  /** Recall and edit buttons on one's own messages. */
  actions?: boolean;
  /** How the other side is named ("Agent", a user id…); default: their user id. */
  nameOf?: (user: string) => string;
  /** Called after every message shown (live or fetched), for previews and unread counts elsewhere. */
  onMessage?: (m: Message) => void;
  /** Called when one of this view's sends is acknowledged (it is not delivered back as a message). */
  onSent?: (text: string, serverTime: bigint) => void;
  /** Called when the server says the conversation is gone (expired, deleted). */
  onGone?: (code: ErrorCode) => void;
  pageSize?: number;
  /** The highest seq another member is known to have read (receipts that came before this view). */
  peerRead?: bigint;
}

const TYPING_SHOWN_MS = 4000;
const TYPING_EVERY_MS = 2500;

export class ChatView {
  readonly root: HTMLElement;
  readonly id: string;
  #o: ChatOptions;
  #log: HTMLOListElement;
  #older: HTMLButtonElement;
  #typing: HTMLElement;
  #form: HTMLFormElement;
  #input: HTMLInputElement;
  #notice: HTMLElement;
  /** Shown messages by seq. */
  #bySeq = new Map<bigint, HTMLLIElement>();
  /** Own sends by client message id (before and after their ack). */
  #byClientId = new Map<string, HTMLLIElement>();
  #oldest: bigint | undefined;
  #newest = 0n;
  #peerRead = 0n;
  #typingTimer: ReturnType<typeof setTimeout> | undefined;
  #readTimer: ReturnType<typeof setTimeout> | undefined;
  #readSent = 0n;
  #ended = false;
  #active = true;

  constructor(o: ChatOptions) {
    this.#o = o;
    this.id = o.conversationId;
    this.#peerRead = o.peerRead ?? 0n;
    const inputId = `compose-${Math.random().toString(36).slice(2, 8)}`;
    this.#older = el("button", { type: "button", class: "older", hidden: true, onclick: () => void this.loadOlder() }, "Load older messages");
    this.#log = el("ol", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Messages" });
    this.#typing = el("p", { class: "typing", "aria-live": "polite" });
    this.#notice = el("p", { class: "ended", hidden: true, role: "status" });
    this.#input = el("input", { id: inputId, type: "text", autocomplete: "off", placeholder: "Write a message…", maxLength: 4000 });
    const typing = throttle(() => {
      void o.client.send(o.conversationId, "", { transient: true, type: TYPE_TYPING }).catch(() => undefined);
    }, TYPING_EVERY_MS);
    this.#input.addEventListener("input", () => {
      if (this.#input.value) typing();
    });
    this.#form = el(
      "form",
      {
        class: "composer",
        onsubmit: (e: Event) => {
          e.preventDefault();
          const text = this.#input.value.trim();
          if (!text || this.#ended) return;
          this.#input.value = "";
          void this.send(text);
        },
      },
      el("label", { class: "visually-hidden", htmlFor: inputId }, "Message"),
      this.#input,
      el("button", { type: "submit" }, "Send"),
    );
    const scroller = el("div", { class: "scroller" }, this.#older, this.#log);
    this.root = el("section", { class: "chat", dataset: { conversation: o.conversationId } }, scroller, this.#typing, this.#notice, this.#form);
    document.addEventListener("visibilitychange", () => this.#maybeRead());
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Whether the view is on screen (read positions move only then). */
  setActive(active: boolean): void {
    this.#active = active;
    this.#maybeRead();
  }

  focus(): void {
    this.#input.focus();
  }

  /** The newest page of history. */
  async load(): Promise<void> {
    try {
      const page = await this.#o.client.fetchHistory({ conversationId: this.id, limit: this.#o.pageSize ?? 30 });
      for (const m of page.messages) this.add(m);
      this.#older.hidden = !page.hasMore;
      this.#scrollToEnd();
    } catch (e) {
      this.#failed(e);
    }
  }

  async loadOlder(): Promise<void> {
    if (this.#oldest === undefined) return;
    const scroller = this.#log.parentElement!;
    const before = scroller.scrollHeight;
    const page = await this.#o.client.fetchHistory({ conversationId: this.id, beforeSeq: this.#oldest, limit: this.#o.pageSize ?? 30 });
    for (const m of page.messages) this.add(m, false);
    this.#older.hidden = !page.hasMore;
    scroller.scrollTop += scroller.scrollHeight - before;
  }

  /** A message of this conversation, live or fetched: shown once, in seq order. */
  add(m: Message, scroll = true): void {
    if (m.conversationId !== this.id) return;
    if (m.transient) {
      if (m.type === TYPE_TYPING && m.sender !== this.#o.me) this.#showTyping(m.sender);
      return;
    }
    if (this.#bySeq.has(m.seq)) return;
    const own = m.clientMessageId ? this.#byClientId.get(m.clientMessageId) : undefined;
    const li = own ?? this.#render(m);
    if (own) this.#fill(own, m);
    li.dataset.seq = String(m.seq);
    this.#bySeq.set(m.seq, li);
    // Insert before the first shown message with a higher seq.
    let next: HTMLLIElement | undefined;
    for (const [seq, other] of this.#bySeq) {
      if (seq > m.seq && other !== li && (!next || seq < BigInt(next.dataset.seq!))) next = other;
    }
    if (!own || next) this.#log.insertBefore(li, next ?? null);
    if (this.#oldest === undefined || m.seq < this.#oldest) this.#oldest = m.seq;
    if (m.seq > this.#newest) this.#newest = m.seq;
    if (m.sender !== this.#o.me) this.#hideTyping();
    this.#ticks();
    this.#o.onMessage?.(m);
    if (scroll) this.#scrollToEnd();
    this.#maybeRead();
  }

  /** An edit or recall of a shown message. */
  updated(kind: MessageUpdateKind, m: Message): void {
    const li = this.#bySeq.get(m.seq);
    if (!li || m.conversationId !== this.id) return;
    this.#fill(li, m);
    if (kind === MessageUpdateKind.RECALLED) li.classList.add("recalled");
  }

  receipt(r: Receipt): void {
    if (r.conversationId !== this.id || r.kind !== ReceiptKind.READ || r.userId === this.#o.me) return;
    if (r.seq > this.#peerRead) {
      this.#peerRead = r.seq;
      this.#ticks();
    }
  }

  /** Someone went offline or came back: a line in the log (not a message). */
  notice(text: string): void {
    this.#log.appendChild(el("li", { class: "notice local" }, text));
    this.#scrollToEnd();
  }

  /** The conversation is over: the composer goes, `text` says why. */
  end(text: string): void {
    this.#ended = true;
    this.#notice.textContent = text;
    this.#notice.hidden = false;
    this.#form.hidden = true;
    this.#hideTyping();
  }

  async send(text: string): Promise<void> {
    const clientMessageId = crypto.randomUUID();
    const li = el("li", { class: "msg mine pending" });
    this.#byClientId.set(clientMessageId, li);
    this.#fillParts(li, this.#o.me, text, undefined, "sending");
    this.#log.appendChild(li);
    this.#scrollToEnd();
    try {
      const ack = await this.#o.client.send(this.id, text, { wantReceipts: true, clientMessageId });
      if (this.#bySeq.has(ack.seq)) {
        // Fetched meanwhile (a reload of the page, another tab): keep the fetched one.
        if (this.#bySeq.get(ack.seq) !== li) li.remove();
        return;
      }
      li.classList.remove("pending");
      li.dataset.seq = String(ack.seq);
      li.dataset.id = ack.messageId;
      this.#bySeq.set(ack.seq, li);
      if (ack.seq > this.#newest) this.#newest = ack.seq;
      if (this.#oldest === undefined) this.#oldest = ack.seq;
      this.#fillParts(li, this.#o.me, text, ack.serverTime, "sent");
      this.#actionsFor(li, { conversationId: this.id, id: ack.messageId, sender: this.#o.me });
      this.#ticks();
      this.#o.onSent?.(text, ack.serverTime);
    } catch (e) {
      li.classList.add("failed");
      this.#fillParts(li, this.#o.me, text, undefined, "failed");
      this.#failed(e);
    }
  }

  #render(m: Message): HTMLLIElement {
    const li = el("li", {});
    this.#fill(li, m);
    return li;
  }

  #fill(li: HTMLLIElement, m: Message): void {
    const mine = m.sender === this.#o.me;
    const notice = m.type === TYPE_NOTICE || m.type === TYPE_WENT_AWAY;
    li.className = notice ? "notice" : `msg ${mine ? "mine" : "theirs"}`;
    if (m.recalled) li.classList.add("recalled");
    li.dataset.id = m.id;
    li.dataset.seq = String(m.seq);
    if (notice) {
      clear(li);
      li.append(m.type === TYPE_WENT_AWAY ? `${this.#name(m.sender)} left the page (${textOf(m)})` : textOf(m));
      return;
    }
    const text = m.recalled ? "This message was recalled" : textOf(m);
    this.#fillParts(li, m.sender, text, m.serverTime, mine ? "sent" : undefined, m.editCount > 0 && !m.recalled);
    if (mine && !m.recalled) this.#actionsFor(li, m);
  }

  #fillParts(li: HTMLLIElement, sender: string, text: string, time: bigint | undefined, state?: string, edited = false): void {
    clear(li);
    li.append(
      el("span", { class: "who" }, this.#name(sender)),
      el("span", { class: "body" }, text),
      el(
        "span",
        { class: "meta" },
        time === undefined ? "" : timeOf(time),
        edited ? el("span", { class: "edited" }, " (edited)") : null,
        state ? el("span", { class: "tick", dataset: { state }, "aria-label": state }, state === "failed" ? " !" : state === "sending" ? " …" : " ✓") : null,
      ),
    );
  }

  #actionsFor(li: HTMLLIElement, m: Pick<Message, "conversationId" | "id" | "sender">): void {
    if (!this.#o.actions) return;
    const edit = el("button", { type: "button", class: "edit", "aria-label": "Edit message" }, "Edit");
    const recall = el("button", { type: "button", class: "recall", "aria-label": "Recall message" }, "Recall");
    recall.addEventListener("click", () => {
      void this.#o.client.recallMessage(this.id, m.id).then((u) => this.updated(MessageUpdateKind.RECALLED, u), (e) => this.#failed(e));
    });
    edit.addEventListener("click", () => {
      const body = li.querySelector(".body");
      if (!body) return;
      const input = el("input", { type: "text", value: body.textContent ?? "", "aria-label": "Edited text", class: "edit-input" });
      const form = el("form", {}, input, el("button", { type: "submit" }, "Save"));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        void this.#o.client
          .editMessage({ conversationId: this.id, messageId: m.id, content: new TextEncoder().encode(input.value) })
          .then((u) => this.updated(MessageUpdateKind.EDITED, u), (err) => this.#failed(err));
      });
      body.replaceWith(form);
      input.focus();
    });
    li.append(el("span", { class: "actions" }, edit, recall));
  }

  #ticks(): void {
    for (const [seq, li] of this.#bySeq) {
      if (!li.classList.contains("mine")) continue;
      const tick = li.querySelector<HTMLElement>(".tick");
      if (tick && seq <= this.#peerRead && tick.dataset.state !== "read") {
        tick.dataset.state = "read";
        tick.setAttribute("aria-label", "read");
        tick.textContent = " ✓✓";
      }
    }
  }

  #name(user: string): string {
    return this.#o.nameOf ? this.#o.nameOf(user) : who(user, this.#o.me);
  }

  #showTyping(user: string): void {
    this.#typing.textContent = `${this.#name(user)} is typing…`;
    clearTimeout(this.#typingTimer);
    this.#typingTimer = setTimeout(() => this.#hideTyping(), TYPING_SHOWN_MS);
  }

  #hideTyping(): void {
    clearTimeout(this.#typingTimer);
    this.#typing.textContent = "";
  }

  /** Moves the read position to the newest message when the view is on screen. */
  #maybeRead(): void {
    if (!this.#active || document.visibilityState !== "visible" || this.#newest <= this.#readSent) return;
    clearTimeout(this.#readTimer);
    this.#readTimer = setTimeout(() => {
      const seq = this.#newest;
      if (seq <= this.#readSent) return;
      this.#readSent = seq;
      void this.#o.client.markRead(this.id, seq).catch(() => {
        this.#readSent = 0n;
      });
    }, 150);
  }

  #scrollToEnd(): void {
    const s = this.#log.parentElement;
    if (s) s.scrollTop = s.scrollHeight;
  }

  #failed(e: unknown): void {
    if (e instanceof TidingsError) {
      if (e.code === ErrorCode.ERROR_TEMPORARY_CONVERSATION_EXPIRED || e.code === ErrorCode.ERROR_CONVERSATION_NOT_FOUND || e.code === ErrorCode.ERROR_NOT_A_MEMBER) {
        this.#o.onGone?.(e.code);
        return;
      }
    }
    this.notice(`Something went wrong: ${e instanceof Error ? e.message : String(e)}`);
  }
}
