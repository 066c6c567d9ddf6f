// Drives LeanCloud's unmodified JS realtime SDK against a tidings server: a temporary
// conversation expires on the server's clock (moved by the test, no waiting), and the SDK
// reports TEMPORARY_CONVERSATION_EXPIRED. See common.mjs for how it is run.

import { sdk, within, check, equal, sign, realtime, run, masterKey, advanceServerClock } from './common.mjs';

async function main() {
  const rt = realtime();
  const alice = await within(rt.createIMClient('alice', { signatureFactory: sign(masterKey) }), 'alice opens');
  const temp = await within(alice.createTemporaryConversation({ members: ['bob'], ttl: 60 }), 'create');
  await within(temp.send(new sdk.TextMessage('before')), 'send before the deadline');
  check(true, 'a message goes through before the deadline');

  await advanceServerClock(61000);
  let expired = null;
  try {
    await within(temp.send(new sdk.TextMessage('after')), 'send after the deadline');
  } catch (e) {
    expired = e;
  }
  equal(expired && expired.code, 4323, 'a send after the deadline fails with 4323');
  equal(expired && expired.name, 'TEMPORARY_CONVERSATION_EXPIRED', 'named TEMPORARY_CONVERSATION_EXPIRED');
  const gone = await within(alice.getConversation(temp.id, true), 'fetch it again, bypassing the SDK cache');
  equal(gone, null, 'and the conversation is no longer found');
  await within(alice.close(), 'alice closes');
}

run(main);
