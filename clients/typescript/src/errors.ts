import { ErrorCode } from "./gen/tidings/v1/frames_pb.js";

/** A request the server answered with an `Error`: `code` is the server's stable error code. */
export class TidingsError extends Error {
  override readonly name = "TidingsError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** `ERROR_RATE_LIMITED`: ms until the same request fits. */
    readonly retryAfterMs: number = 0,
  ) {
    super(`${ErrorCode[code] ?? `error ${code}`}: ${message}`);
  }
}

/** No reply came within the request's timeout. */
export class TimeoutError extends Error {
  override readonly name = "TimeoutError";
  constructor(readonly request: string, readonly timeoutMs: number) {
    super(`${request}: no reply within ${timeoutMs} ms`);
  }
}

/**
 * The connection closed before the reply came (the request may or may not have been done), or
 * the client is closed for good. Sends are not failed by a closed connection: they are retried
 * after the reconnect.
 */
export class ConnectionClosedError extends Error {
  override readonly name = "ConnectionClosedError";
  constructor(readonly request: string, readonly code?: number) {
    super(`${request}: the connection closed${code === undefined ? "" : ` (${code})`}`);
  }
}
