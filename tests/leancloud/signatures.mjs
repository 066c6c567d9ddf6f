// Conversation signatures (leancloud_conversation_signatures on): creating a conversation and
// adding or removing members need the app backend's signature, as LeanCloud's console option
// of the same meaning required. Driven through the unmodified SDK's
// `conversationSignatureFactory`. See common.mjs for how it is run.

import { sdk, within, check, equal, sign, signConversation, realtime, run, masterKey } from './common.mjs';

async function refused(promise, what) {
  try {
    await promise;
  } catch (e) {
    equal(e.code, 4302, `${what} is refused with 4302`);
    return;
  }
  throw new Error(`check failed: ${what} was not refused`);
}

async function main() {
  const rt = realtime();
  const alice = await within(
    rt.createIMClient('alice', {
      signatureFactory: sign(masterKey),
      conversationSignatureFactory: signConversation(masterKey),
    }),
    'alice opens',
  );
  const conv = await within(alice.createConversation({ members: ['bob'], name: 'signed' }), 'create');
  check(typeof conv.id === 'string', 'a signed create works');
  await within(conv.add(['carol']), 'add carol');
  await within(conv.remove(['bob']), 'remove bob');
  equal([...conv.members].sort(), ['alice', 'carol'], 'signed add and remove work');
  const temp = await within(
    alice.createTemporaryConversation({ members: ['bob'] }),
    'create a temporary conversation',
  );
  check(temp.id.startsWith('_tmp:'), 'a temporary conversation needs no signature check');

  // An app without a conversation signature factory, or one signing with another key.
  const unsigned = await within(
    rt.createIMClient('dave', { signatureFactory: sign(masterKey) }),
    'dave opens',
  );
  await refused(unsigned.createConversation({ members: ['bob'] }), 'an unsigned create');
  const forged = await within(
    rt.createIMClient('erin', {
      signatureFactory: sign(masterKey),
      conversationSignatureFactory: signConversation('not-the-master-key'),
    }),
    'erin opens',
  );
  await refused(forged.createConversation({ members: ['bob'] }), 'a create signed with another key');
  // A signature for one member list does not cover another.
  const unsignedAdd = await within(unsigned.getConversation(conv.id), 'dave finds the open group');
  await refused(unsignedAdd.join(), 'an unsigned join');
  const aliceView = await within(alice.getConversation(conv.id), 'alice has the group');
  const replayed = signConversation(masterKey)(conv.id, 'alice', ['frank'], 'invite');
  const mismatched = await within(
    rt.createIMClient('grace', {
      signatureFactory: sign(masterKey),
      conversationSignatureFactory: () => replayed,
    }),
    'grace opens',
  );
  const graceConv = await within(mismatched.getConversation(conv.id), 'grace finds the group');
  await refused(graceConv.join(), "a signature made for another client and member");
  check(aliceView.members.includes('carol'), 'the group is unchanged');
}

run(main);
