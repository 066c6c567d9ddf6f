// Helpers shared by the SDK scenario scripts.
//
// Every script is run as: node <script> <ws-url> <http-base> <app-id> <master-key> <binary|base64>
// and prints one `ok - …` line per check, then `all passed`; any failure exits non-zero.
// Every wait is on an SDK event or a reply, each with a deadline.

import crypto from 'node:crypto';
import readline from 'node:readline';

// LC_SDK picks the SDK package: `leancloud-realtime` (5.0.0-rc.8) or `leancloud-realtime-v4`
// (4.3.1, installed under that alias).
export const sdk = (await import(process.env.LC_SDK || 'leancloud-realtime')).default;
export const [url, server, appId, masterKey, mode] = process.argv.slice(2);

const DEADLINE_MS = 15000;

export function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

export function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`check failed: ${what}: expected ${e}, got ${a}`);
  console.log(`ok - ${what}`);
}

/** The next `event` an emitter fires (with its arguments). */
export function next(emitter, event, what) {
  return within(new Promise((resolve) => emitter.once(event, (...args) => resolve(args))), what);
}

/** A login signature as an app's backend makes it: HMAC-SHA1 over appid:clientid::t:nonce. */
export function sign(key) {
  return (clientId) => {
    const timestamp = Date.now();
    const nonce = crypto.randomBytes(8).toString('hex');
    const signature = crypto
      .createHmac('sha1', key)
      .update(`${appId}:${clientId}::${timestamp}:${nonce}`)
      .digest('hex');
    return { signature, timestamp, nonce };
  };
}

/**
 * A conversation signature as an app's backend makes it: HMAC-SHA1 over
 * appid:clientid:sorted_ids:t:nonce (create) or appid:clientid:convid:sorted_ids:t:nonce:action.
 */
export function signConversation(key) {
  return (conversationId, clientId, targetIds, action) => {
    const timestamp = Date.now();
    const nonce = crypto.randomBytes(8).toString('hex');
    const ids = [...targetIds].sort().join(':');
    const message = action === 'create'
      ? `${appId}:${clientId}:${ids}:${timestamp}:${nonce}`
      : `${appId}:${clientId}:${conversationId}:${ids}:${timestamp}:${nonce}:${action}`;
    const signature = crypto.createHmac('sha1', key).update(message).digest('hex');
    return { signature, timestamp, nonce };
  };
}

/** The app's one Realtime (the SDK allows one per app id and process). */
export function realtime(options = {}) {
  return new sdk.Realtime({
    appId,
    appKey: 'the-app-key-proves-nothing',
    server,
    RTMServers: url,
    noBinary: mode === 'base64',
    ...options,
  });
}

/** Runs a scenario and exits with its outcome. */
export function run(main) {
  main().then(
    () => {
      console.log('all passed');
      process.exit(0);
    },
    (e) => {
      console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
      process.exit(1);
    },
  );
}

const answers = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the test driving this script to move the server's clock by `ms`. */
export async function advanceServerClock(ms) {
  console.log(`@@ advance ${ms}`);
  const { value } = await within(answers.next(), 'the server clock moves');
  if (value !== 'ok') throw new Error(`clock: unexpected answer ${value}`);
}
