// What a LeanCloud client missed while its socket was down reaches it after it reconnects:
// edits and recalls as patch pushes after `session/open` (from its `lastPatchTime`), and
// changes of its own membership and of its groups (others joining and leaving, a rename,
// another member muted, promoted or blocked) through `GET /1.1/rtm/notifications` (from its `lastNotificationTime`), all through the
// unmodified SDK; what it heard live is not told again. Alice acts from another process
// (the SDK allows one Realtime per app and process). See common.mjs for how it is run.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { sdk, within, check, equal, next, sign, realtime, run, masterKey, advanceServerClock } from './common.mjs';

const { Event } = sdk;

/** Runs `as-alice.mjs <step> <args…>` and returns what it printed last (JSON). */
async function alice(step, ...args) {
  const { stdout } = await within(
    promisify(execFile)(process.execPath, ['as-alice.mjs', ...process.argv.slice(2), step, ...args]),
    `alice: ${step}`,
  );
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

async function main() {
  const rt = realtime();
  const bob = await within(rt.createIMClient('bob', { signatureFactory: sign(masterKey) }), 'bob opens');

  const invited = next(bob, Event.INVITED, 'bob is invited');
  const setup = await alice('setup');
  const [, conv] = await invited;
  equal(conv.id, setup.team, 'bob is in the group alice made');
  // Bob hears this one live, later than his invitation: it must not come back when he
  // catches up.
  await advanceServerClock(1000);
  const daveJoins = next(bob, Event.MEMBERS_JOINED, 'bob hears dave join');
  await alice('add-dave', setup.team);
  const [{ members: dave }] = await daveJoins;
  equal(dave, ['dave'], 'live, as dave joins');
  const first = await within(conv.queryMessages({ limit: 10 }), 'bob reads the history');
  equal(first.map((m) => m.getText()), ['one', 'two'], 'with its two messages');
  const leaving = await within(bob.getConversation(setup.leaving), 'bob has the other group');

  // Bob's socket goes down; meanwhile alice edits, recalls, adds bob to a group and removes
  // him from another.
  const disconnected = next(rt, Event.DISCONNECT, 'the socket closes');
  rt.pause();
  await disconnected;
  await advanceServerClock(1000);
  await alice('while-bob-is-away', setup.team, setup.one, setup.two, setup.later, setup.leaving);

  // Back: the SDK resumes with its session token, then catches up.
  const edit = next(bob, Event.MESSAGE_UPDATE, 'the missed edit arrives');
  const recall = next(bob, Event.MESSAGE_RECALL, 'the missed recall arrives');
  // SDK 4.x asks for missed notifications at `https://` + `server` whatever `server` says
  // (see docs/leancloud.md), so without TLS in front it cannot reach them.
  const notified = !process.env.LC_SDK?.endsWith('-v4');
  const added = notified && next(bob, Event.INVITED, 'the missed invitation arrives');
  const kicked = notified && next(leaving, Event.KICKED, 'the missed removal arrives');
  const joins = [];
  conv.on(Event.MEMBERS_JOINED, ({ members, invitedBy }) => joins.push([members, invitedBy]));
  const left = notified && next(conv, Event.MEMBERS_LEFT, 'the missed leave arrives');
  const renamed = notified && next(conv, Event.INFO_UPDATED, 'the missed rename arrives');
  const mutes = [];
  conv.on(Event.MEMBERS_MUTED, ({ members, mutedBy }) => mutes.push([members, mutedBy]));
  const promoted = notified && next(conv, Event.MEMBER_INFO_UPDATED, 'the missed role change arrives');
  const blocks = [];
  conv.on(Event.MEMBERS_BLOCKED, ({ members, blockedBy }) => blocks.push([members, blockedBy]));
  rt.resume();
  const [edited] = await edit;
  equal(edited.id, setup.one, 'an edit made while offline is replayed');
  equal(edited.getText(), 'one, edited', 'with its new text');
  const [recalled] = await recall;
  equal(recalled.id, setup.two, 'a recall made while offline is replayed');
  check(recalled instanceof sdk.RecalledMessage, 'as a recalled message');
  if (!notified) return;
  const [{ invitedBy }, later] = await added;
  equal([invitedBy, later.id], ['alice', setup.later], 'being added while offline is notified');
  const [{ kickedBy }] = await kicked;
  equal(kickedBy, 'alice', 'and being removed');
  // Others joining and leaving the group while bob was away, and its new name.
  const [{ members: gone, kickedBy: remover }] = await left;
  equal([gone, remover], [['erin'], 'alice'], 'another member leaving while offline is notified');
  const [{ attributes, updatedBy }] = await renamed;
  equal([attributes.name, updatedBy], ['team, renamed', 'alice'], 'and the group being renamed');
  equal(conv.name, 'team, renamed', 'which the cached conversation takes');
  // One more round trip: anything else the catch-up carried has been handed out by now.
  await within(conv.count(), 'count the members');
  equal(joins, [[['carol', 'erin'], 'alice']], 'others joining while offline, once; not dave again');
  // Others' mutes, roles and blocks while bob was away, each once.
  const [{ member, memberInfo, updatedBy: promoter }] = await promoted;
  equal([member, memberInfo.role, promoter], ['carol', 'Manager', 'alice'], 'another member\'s role change is notified');
  await within(conv.count(), 'count the members again');
  equal(mutes, [[['carol'], 'alice']], 'another member being muted while offline is notified, once');
  equal(blocks, [[['mallory'], 'alice']], 'and someone being blocked');
}

run(main);
