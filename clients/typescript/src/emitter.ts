/** A minimal typed event emitter (no dependency, works in browsers and Node). */
export class Emitter<Events extends { [K in keyof Events]: (...args: never[]) => void }> {
  #handlers = new Map<keyof Events, Set<Events[keyof Events]>>();

  /** Adds a handler; returns a function that removes it. */
  on<K extends keyof Events>(event: K, handler: Events[K]): () => void {
    let set = this.#handlers.get(event);
    if (!set) {
      set = new Set();
      this.#handlers.set(event, set);
    }
    set.add(handler);
    return () => this.off(event, handler);
  }

  off<K extends keyof Events>(event: K, handler: Events[K]): void {
    this.#handlers.get(event)?.delete(handler);
  }

  /** Resolves with the arguments of the next `event`. */
  once<K extends keyof Events>(event: K): Promise<Parameters<Events[K]>> {
    return new Promise((resolve) => {
      const off = this.on(event, ((...args: Parameters<Events[K]>) => {
        off();
        resolve(args);
      }) as Events[K]);
    });
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        (h as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (e) {
        // A failing handler must not break the client's own bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
