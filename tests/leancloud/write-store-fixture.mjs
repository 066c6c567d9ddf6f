// Writes the data of a store fixture through the SDK: run once against a server of the version
// the fixture is for, then `tidings store export` its data directory (see tests/fixtures/).
//
// A group of alice, bob and carol with four messages (the second edited, the third recalled,
// bob has read up to the second), and a temporary conversation of alice and bob with one.

import { sdk, within, sign, realtime, run, masterKey } from './common.mjs';

const { TextMessage } = sdk;

async function main() {
  const shared = realtime();
  const open = (id) =>
    within(shared.createIMClient(id, { signatureFactory: sign(masterKey) }), `${id} opens`);
  const alice = await open('alice');
  const bob = await open('bob');
  await open('carol');
  const group = await within(
    alice.createConversation({ members: ['bob', 'carol'], name: 'fixture group' }),
    'create the group',
  );
  const one = await within(group.send(new TextMessage('one')), 'send one');
  const two = await within(group.send(new TextMessage('two')), 'send two');
  const three = await within(group.send(new TextMessage('three')), 'send three');
  await within(group.update(two, new TextMessage('two, edited')), 'edit two');
  await within(group.recall(three), 'recall three');
  const bobGroup = await within(bob.getConversation(group.id), 'bob gets the group');
  await within(bobGroup.send(new TextMessage('four')), 'send four');
  await within(bobGroup.read(), 'bob reads');
  const temp = await within(
    alice.createTemporaryConversation({ members: ['bob'], ttl: 86400 * 30 }),
    'create the temporary conversation',
  );
  await within(temp.send(new TextMessage('temporary')), 'send into the temporary one');
  console.log(JSON.stringify({ group: group.id, temporary: temp.id, one: one.id }));
}

run(main);
