import { CloseCode } from "./gen/tidings/v1/frames_pb.js";

/** How reconnects are spaced: exponential backoff with jitter. */
export interface BackoffOptions {
  /** First delay (ms). Default 500. */
  initialDelayMs?: number;
  /** Longest delay (ms). Default 30 000. */
  maxDelayMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** Fraction of each delay that is random (0: none, 1: anywhere from 0 to the delay). Default 0.5. */
  jitter?: number;
}

/** The delay before reconnect attempt `attempt` (0-based). `random` is in [0, 1). */
export function backoffDelay(attempt: number, o: BackoffOptions = {}, random = Math.random()): number {
  const initial = o.initialDelayMs ?? 500;
  const max = o.maxDelayMs ?? 30_000;
  const factor = o.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, o.jitter ?? 0.5));
  const base = Math.min(max, initial * Math.pow(factor, attempt));
  return Math.round(base * (1 - jitter * random));
}

/** What a close code means for reconnecting. */
export type CloseAction =
  /** Reconnect after the backoff delay. */
  | "retry"
  /** Reconnect after asking the token callback for a new token (4003). */
  | "refresh"
  /** Stay disconnected. */
  | "stop";

/**
 * The default reconnect policy per close code (see docs/protocol.md, Close codes). Never retried:
 * a logout (1000), an auth failure (4002), a malformed frame or protocol violation (4004, 4005:
 * a bug that a retry would repeat), replacement by a newer session with the same device tag
 * (4006: retrying would replace it back, in a loop), an oversized frame (4009) and the session
 * limit (4011: retrying would close another session of the user), a disconnect by the app's
 * backend (4012: whether to come back is the app's decision) and a ban (4045). Token expiry
 * (4003) and revocation (4046) are retried only with a token callback, which is asked for a new
 * token. Everything else (network drops, 1001 shutdown, slow consumer, idle and login timeouts,
 * internal errors) is retried.
 */
export function closeAction(code: number): CloseAction {
  switch (code) {
    case 1000:
    case CloseCode.CLOSE_AUTH_FAILED:
    case CloseCode.CLOSE_BAD_FRAME:
    case CloseCode.CLOSE_PROTOCOL_VIOLATION:
    case CloseCode.CLOSE_REPLACED:
    case CloseCode.CLOSE_FRAME_TOO_LARGE:
    case CloseCode.CLOSE_SESSION_LIMIT:
    case CloseCode.CLOSE_KICKED:
    case CloseCode.CLOSE_BANNED:
      return "stop";
    case CloseCode.CLOSE_TOKEN_EXPIRED:
    case CloseCode.CLOSE_TOKEN_REVOKED:
      return "refresh";
    default:
      return "retry";
  }
}
