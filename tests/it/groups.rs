//! Group control through the native protocol: the role table (every rule allowed and refused),
//! ownership transfer, the manager cap, muting (timed, until lifted, mute-all) and the
//! blacklist, with their pushes, their replay to offline devices and their durability.

use crate::harness::*;
use tidings::client::Client;
use tidings::protocol::pb::{self, ConversationEventKind as Ev, ErrorCode, MemberRole};

fn kind(e: &pb::ConversationEvent) -> Ev {
    Ev::try_from(e.kind).unwrap()
}

async fn refused<T: std::fmt::Debug>(
    f: impl std::future::Future<Output = Result<T, tidings::client::ClientError>>,
) -> ErrorCode {
    within(f)
        .await
        .expect_err("the request must be refused")
        .code()
        .expect("a reply error")
}

/// The next conversation event of `kind`, skipping messages and other pushes.
async fn event_of(c: &mut Client, want: Ev) -> pb::ConversationEvent {
    loop {
        if let pb::server_frame::Body::ConversationEvent(e) = push(c).await
            && kind(&e) == want
        {
            return e;
        }
    }
}

/// A group of alice (owner) with bob, carol and dave.
async fn group(alice: &Client) -> String {
    within(alice.create_group("team", &["bob", "carol", "dave"]))
        .await
        .unwrap()
        .id
}

fn role_in(list: &pb::MemberList, user: &str) -> MemberRole {
    let info = list.infos.iter().find(|i| i.user_id == user).unwrap();
    MemberRole::try_from(info.role).unwrap()
}

#[tokio::test]
async fn a_plain_member_may_add_and_update_and_nothing_the_role_table_keeps_for_others() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let carol = server.client("carol").await;
    let id = group(&alice).await;
    let sent = within(carol.send_text(&id, "carol's")).await.unwrap();

    // Allowed to every member.
    within(bob.add_members(&id, &["erin"])).await.unwrap();
    within(bob.update(pb::UpdateConversation {
        conversation_id: id.clone(),
        name: Some("renamed".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    within(bob.list_muted_members(&id, "", 0)).await.unwrap();
    within(bob.list_blocked_members(&id, "", 0)).await.unwrap();

    // Kept for managers and the owner.
    let denied = ErrorCode::ErrorPermissionDenied;
    assert_eq!(refused(bob.remove_members(&id, &["carol"])).await, denied);
    assert_eq!(refused(bob.mute_members(&id, &["carol"], 0)).await, denied);
    assert_eq!(refused(bob.unmute_members(&id, &["carol"])).await, denied);
    assert_eq!(refused(bob.set_mute_all(&id, true)).await, denied);
    assert_eq!(refused(bob.block_members(&id, &["carol"])).await, denied);
    assert_eq!(refused(bob.unblock_members(&id, &["carol"])).await, denied);
    assert_eq!(refused(bob.recall(&id, &sent.message_id)).await, denied);
    // Kept for the owner.
    assert_eq!(
        refused(bob.set_member_role(&id, &["carol"], MemberRole::Manager)).await,
        denied
    );
    assert_eq!(refused(bob.transfer_ownership(&id, "bob")).await, denied);
    assert_eq!(refused(bob.delete_conversation(&id, false)).await, denied);

    // Nothing of it happened.
    let members = within(alice.list_members(&id, "", 0)).await.unwrap();
    assert!(members.members.contains(&"carol".to_string()));
    assert!(members.infos.iter().all(|i| i.muted_until == 0));
    assert_eq!(role_in(&members, "alice"), MemberRole::Owner);
    assert_eq!(role_in(&members, "carol"), MemberRole::Member);
    // Non-members may do none of it.
    let eve = server.client("eve").await;
    assert_eq!(
        refused(eve.mute_members(&id, &["carol"], 0)).await,
        ErrorCode::ErrorNotAMember
    );
}

#[tokio::test]
async fn managers_act_on_members_but_not_on_managers_or_the_owner() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let dave = server.client("dave").await;
    let id = group(&alice).await;
    let owners = within(alice.send_text(&id, "the owner's")).await.unwrap();
    let daves = within(dave.send_text(&id, "dave's")).await.unwrap();

    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();
    let promoted = event_of(&mut bob, Ev::RoleChanged).await;
    assert_eq!(promoted.members, vec!["bob"]);
    assert_eq!(promoted.role, MemberRole::Manager as i32);
    assert_eq!(promoted.by, "alice");
    assert!(
        promoted.user_seq > 0,
        "a role change is logged for its member"
    );
    let seen = event_of(&mut carol, Ev::RoleChanged).await;
    assert_eq!(seen.user_seq, 0, "the others get it live");

    // Over members: allowed.
    within(bob.mute_members(&id, &["dave"], 0)).await.unwrap();
    within(bob.unmute_members(&id, &["dave"])).await.unwrap();
    within(bob.recall(&id, &daves.message_id)).await.unwrap();
    within(bob.set_mute_all(&id, true)).await.unwrap();
    within(bob.set_mute_all(&id, false)).await.unwrap();
    within(bob.remove_members(&id, &["dave"])).await.unwrap();
    within(bob.block_members(&id, &["mallory"])).await.unwrap();
    within(bob.unblock_members(&id, &["mallory"]))
        .await
        .unwrap();

    // Over the owner, and over another manager: refused.
    let denied = ErrorCode::ErrorPermissionDenied;
    assert_eq!(refused(bob.remove_members(&id, &["alice"])).await, denied);
    assert_eq!(refused(bob.mute_members(&id, &["alice"], 60)).await, denied);
    assert_eq!(refused(bob.block_members(&id, &["alice"])).await, denied);
    assert_eq!(refused(bob.recall(&id, &owners.message_id)).await, denied);
    within(alice.set_member_role(&id, &["carol"], MemberRole::Manager))
        .await
        .unwrap();
    assert_eq!(refused(bob.remove_members(&id, &["carol"])).await, denied);
    assert_eq!(refused(bob.mute_members(&id, &["carol"], 60)).await, denied);
    // Roles, ownership and deleting stay the owner's.
    assert_eq!(
        refused(bob.set_member_role(&id, &["carol"], MemberRole::Member)).await,
        denied
    );
    assert_eq!(refused(bob.transfer_ownership(&id, "bob")).await, denied);
    assert_eq!(refused(bob.delete_conversation(&id, false)).await, denied);

    // The owner may do everything to managers; demoted, bob is a member again.
    within(alice.mute_members(&id, &["carol"], 60))
        .await
        .unwrap();
    within(alice.set_member_role(&id, &["bob"], MemberRole::Member))
        .await
        .unwrap();
    assert_eq!(refused(bob.remove_members(&id, &["erin"])).await, denied);
    within(alice.remove_members(&id, &["carol"])).await.unwrap();
    let members = within(alice.list_members(&id, "", 0)).await.unwrap();
    assert_eq!(members.members, vec!["alice", "bob"]);
    assert_eq!(role_in(&members, "bob"), MemberRole::Member);
    // The owner's role moves only by transfer.
    assert_eq!(
        refused(alice.set_member_role(&id, &["alice"], MemberRole::Member)).await,
        ErrorCode::ErrorInvalidArgument
    );
}

#[tokio::test]
async fn managers_are_capped_by_max_managers() {
    let server = TestServer::start_with(|c| c.max_managers = 1).await;
    let alice = server.client("alice").await;
    let id = group(&alice).await;
    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();
    let err = within(alice.set_member_role(&id, &["carol"], MemberRole::Manager))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(err.to_string().contains("max_managers"), "{err}");
    // Promoting again the one manager does not count twice; demoting frees the seat.
    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();
    within(alice.set_member_role(&id, &["bob"], MemberRole::Member))
        .await
        .unwrap();
    within(alice.set_member_role(&id, &["carol"], MemberRole::Manager))
        .await
        .unwrap();
}

#[tokio::test]
async fn ownership_moves_by_transfer_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let id = group(&alice).await;
    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();
    event_of(&mut bob, Ev::RoleChanged).await;

    assert_eq!(
        refused(alice.transfer_ownership(&id, "zed")).await,
        ErrorCode::ErrorInvalidArgument
    );
    let c = within(alice.transfer_ownership(&id, "bob")).await.unwrap();
    assert_eq!(c.owner, "bob");
    let e = event_of(&mut bob, Ev::OwnerChanged).await;
    assert_eq!(e.members, vec!["bob"]);
    assert_eq!(e.conversation.unwrap().owner, "bob");
    assert!(e.user_seq > 0);

    // The former owner is a plain member now; the new one holds every right.
    let denied = ErrorCode::ErrorPermissionDenied;
    assert_eq!(refused(alice.remove_members(&id, &["carol"])).await, denied);
    within(bob.set_member_role(&id, &["carol"], MemberRole::Manager))
        .await
        .unwrap();
    within(bob.mute_members(&id, &["alice"], 0)).await.unwrap();

    server.restart().await;
    let bob = server.client("bob").await;
    let list = within(bob.list_members(&id, "", 0)).await.unwrap();
    assert_eq!(role_in(&list, "bob"), MemberRole::Owner);
    assert_eq!(role_in(&list, "carol"), MemberRole::Manager);
    assert_eq!(role_in(&list, "alice"), MemberRole::Member);
    let alice_info = list.infos.iter().find(|i| i.user_id == "alice").unwrap();
    assert_eq!(alice_info.muted_until, i64::MAX, "muted until lifted");
    let alice = server.client("alice").await;
    assert_eq!(
        refused(alice.send_text(&id, "still muted")).await,
        ErrorCode::ErrorMuted
    );
    // The owner leaving hands the group over as before (the longest-standing member).
    within(bob.leave(&id)).await.unwrap();
    let c = within(alice.get_conversation(&id)).await.unwrap();
    assert_eq!(c.owner, "alice");
}

#[tokio::test]
async fn role_changes_reach_an_offline_device_and_the_list_entry() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let id = group(&alice).await;
    let (bob, welcome) = server.login("bob").await;
    let cursor = welcome.ok.event_cursor;
    let entry = within(bob.get_list_entry(&id)).await.unwrap();
    bob.disconnect();
    server.clock.advance(1);

    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();
    within(alice.mute_members(&id, &["bob"], 0)).await.unwrap();

    // Both changes are replayed at the next login.
    let (bob, welcome) = server.login_device("bob", "", cursor).await;
    let kinds: Vec<Ev> = welcome.events.iter().map(kind).collect();
    assert_eq!(kinds, vec![Ev::RoleChanged, Ev::MembersMuted]);
    let listed = within(bob.list_conversations(pb::ListConversations {
        updated_after: entry.updated_at,
        ..Default::default()
    }))
    .await
    .unwrap();
    let e = listed
        .entries
        .iter()
        .find(|e| e.conversation_id == id)
        .expect("the changed entry is in the incremental sync");
    assert_eq!(e.role, MemberRole::Manager as i32);
    assert_eq!(e.muted_until, i64::MAX);
}

#[tokio::test]
async fn a_timed_mute_refuses_sends_until_the_clock_passes_it() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let id = group(&alice).await;

    let now = server.clock_now();
    within(alice.mute_members(&id, &["bob"], 60)).await.unwrap();
    let e = event_of(&mut bob, Ev::MembersMuted).await;
    assert_eq!(e.members, vec!["bob"]);
    assert_eq!(e.muted_until, now + 60_000);
    assert!(e.user_seq > 0, "a mute is logged for the muted");
    let seen = event_of(&mut carol, Ev::MembersMuted).await;
    assert_eq!((seen.muted_until, seen.user_seq), (now + 60_000, 0));

    let err = within(bob.send_text(&id, "hello?")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorMuted));
    let transient = within(bob.send(pb::SendMessage {
        conversation_id: id.clone(),
        content: "typing".into(),
        transient: true,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(transient.code(), Some(ErrorCode::ErrorMuted));
    // A will message is checked as a send is.
    assert_eq!(
        within(bob.set_will_text(&id, "gone"))
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::ErrorMuted)
    );
    within(carol.send_text(&id, "others still speak"))
        .await
        .unwrap();
    let muted = within(carol.list_muted_members(&id, "", 0)).await.unwrap();
    assert_eq!(muted.members.len(), 1);
    assert_eq!(muted.members[0].user_id, "bob");
    assert_eq!(muted.members[0].muted_until, now + 60_000);

    server.clock.advance(59_999);
    assert_eq!(
        within(bob.send_text(&id, "now?")).await.unwrap_err().code(),
        Some(ErrorCode::ErrorMuted)
    );
    server.clock.advance(1);
    within(bob.send_text(&id, "free again")).await.unwrap();
    let muted = within(carol.list_muted_members(&id, "", 0)).await.unwrap();
    assert!(muted.members.is_empty(), "an ended mute is not listed");

    // Limits.
    let err = within(alice.mute_members(&id, &["bob"], 30 * 86_400 + 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(err.to_string().contains("max_mute_secs"), "{err}");
    assert_eq!(
        refused(alice.mute_members(&id, &["zed"], 10)).await,
        ErrorCode::ErrorInvalidArgument
    );
    let direct = within(alice.create_direct("bob")).await.unwrap();
    assert_eq!(
        refused(alice.mute_members(&direct.id, &["bob"], 10)).await,
        ErrorCode::ErrorNotAllowedForKind
    );
}

#[tokio::test]
async fn a_mute_until_lifted_ends_by_unmute_and_the_muted_list_pages() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let id = within(alice.create_group("big", &["bob", "carol", "dave", "erin", "frank"]))
        .await
        .unwrap()
        .id;
    within(alice.mute_members(&id, &["bob", "carol", "dave", "erin", "frank"], 0))
        .await
        .unwrap();
    event_of(&mut bob, Ev::MembersMuted).await;
    // A year later (new sessions: the old tokens ran out), still muted.
    server.clock.advance(365 * 86_400_000);
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = within(alice.list_muted_members(&id, &cursor, 2))
            .await
            .unwrap();
        assert!(page.members.len() <= 2);
        seen.extend(page.members.iter().map(|m| m.user_id.clone()));
        if !page.has_more {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, vec!["bob", "carol", "dave", "erin", "frank"]);
    assert_eq!(
        refused(bob.send_text(&id, "a year later")).await,
        ErrorCode::ErrorMuted
    );
    within(alice.unmute_members(&id, &["bob"])).await.unwrap();
    let e = event_of(&mut bob, Ev::MembersUnmuted).await;
    assert_eq!(e.members, vec!["bob"]);
    within(bob.send_text(&id, "thanks")).await.unwrap();
}

#[tokio::test]
async fn mute_all_leaves_only_the_owner_and_managers_speaking() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let id = group(&alice).await;
    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();

    let c = within(bob.set_mute_all(&id, true)).await.unwrap();
    assert!(c.mute_all);
    let e = event_of(&mut carol, Ev::MuteAllChanged).await;
    assert!(e.conversation.unwrap().mute_all);
    assert_eq!(e.by, "bob");
    assert_eq!(
        refused(carol.send_text(&id, "may I?")).await,
        ErrorCode::ErrorMuted
    );
    within(alice.send_text(&id, "the owner speaks"))
        .await
        .unwrap();
    within(bob.send_text(&id, "a manager speaks"))
        .await
        .unwrap();
    let entry = within(carol.get_list_entry(&id)).await.unwrap();
    assert!(entry.mute_all);

    server.restart().await;
    let alice = server.client("alice").await;
    let carol = server.client("carol").await;
    assert!(within(carol.get_conversation(&id)).await.unwrap().mute_all);
    assert_eq!(
        refused(carol.send_text(&id, "after the restart?")).await,
        ErrorCode::ErrorMuted
    );
    let c = within(alice.set_mute_all(&id, false)).await.unwrap();
    assert!(!c.mute_all);
    within(carol.send_text(&id, "at last")).await.unwrap();
}

#[tokio::test]
async fn blocked_users_are_removed_and_cannot_come_back_until_unblocked() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (carol, welcome) = server.login("carol").await;
    let cursor = welcome.ok.event_cursor;
    let id = group(&alice).await;
    carol.disconnect();

    let c = within(alice.block_members(&id, &["carol", "mallory"]))
        .await
        .unwrap();
    assert_eq!(c.member_count, 3, "carol was removed");
    let e = event_of(&mut bob, Ev::MembersBlocked).await;
    assert_eq!(e.members, vec!["carol", "mallory"]);
    assert_eq!(e.user_seq, 0);
    // Carol, offline, gets it at her next login; her list drops the group.
    let (carol, welcome) = server.login_device("carol", "", cursor).await;
    let blocked = welcome
        .events
        .iter()
        .find(|e| kind(e) == Ev::MembersBlocked)
        .expect("the block is replayed to the blocked member");
    assert_eq!(blocked.conversation_id, id);
    assert_eq!(
        refused(carol.send_text(&id, "hello?")).await,
        ErrorCode::ErrorNotAMember
    );
    assert!(
        within(carol.get_list_entry(&id)).await.is_err(),
        "the group left carol's list"
    );

    // Nobody may add them back, not even the owner.
    for who in [&alice, &bob] {
        assert_eq!(
            refused(who.add_members(&id, &["carol"])).await,
            ErrorCode::ErrorBlacklisted
        );
        assert_eq!(
            refused(who.add_members(&id, &["mallory", "zoe"])).await,
            ErrorCode::ErrorBlacklisted
        );
    }
    let list = within(bob.list_blocked_members(&id, "", 1)).await.unwrap();
    assert_eq!(
        (list.users.clone(), list.has_more),
        (vec!["carol".into()], true)
    );
    let list = within(bob.list_blocked_members(&id, &list.next_cursor, 1))
        .await
        .unwrap();
    assert_eq!((list.users, list.has_more), (vec!["mallory".into()], false));

    server.restart().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    assert_eq!(
        refused(alice.add_members(&id, &["carol"])).await,
        ErrorCode::ErrorBlacklisted
    );
    within(alice.unblock_members(&id, &["carol"]))
        .await
        .unwrap();
    let e = event_of(&mut bob, Ev::MembersUnblocked).await;
    assert_eq!(e.members, vec!["carol"]);
    let c = within(alice.add_members(&id, &["carol"])).await.unwrap();
    assert_eq!(c.member_count, 4);
    let list = within(bob.list_blocked_members(&id, "", 0)).await.unwrap();
    assert_eq!(list.users, vec!["mallory"]);
}

#[tokio::test]
async fn the_blacklist_is_capped_and_never_holds_the_owner() {
    let server = TestServer::start_with(|c| c.max_blacklist = 2).await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let id = group(&alice).await;
    within(alice.set_member_role(&id, &["bob"], MemberRole::Manager))
        .await
        .unwrap();
    assert_eq!(
        refused(bob.block_members(&id, &["alice"])).await,
        ErrorCode::ErrorPermissionDenied
    );
    within(alice.block_members(&id, &["x", "y"])).await.unwrap();
    // Blocking again someone already listed is no change.
    within(alice.block_members(&id, &["x"])).await.unwrap();
    let err = within(alice.block_members(&id, &["z"])).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(err.to_string().contains("max_blacklist"), "{err}");
}
